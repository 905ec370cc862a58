"""Multimodal JSONL for ``--task multimodal``: text and a label, plus an image and/or numeric features.

Images (a PNG/JPEG path relative to the file, a ``.npy`` path, or a nested list of pixels) become
3 x S x S float32 arrays in [0, 1] (S = ``data.image_size``); normalisation belongs to the model, so an
attack can work in pixel space. Features stay raw here: encoding standardises them with the training
split's statistics, which the Task keeps (and config.json saves) so eval and predict standardise new
files exactly as training did. Every bad row is a one-line FmkitError naming the file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmkit.config import DataConfig
from fmkit.data.readers import TextExample, _json_rows, read_lines, read_table
from fmkit.errors import FmkitError

IMAGE, FEATURES = "image", "features"
BATCH_KEYS = {IMAGE: "pixel_values", FEATURES: "features"}  # what the fused model's forward takes
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class MultimodalExample(TextExample):
    """A text example with its image (3 x S x S in [0, 1]) and raw feature vector, either may be None."""

    image: np.ndarray | None = None
    features: np.ndarray | None = None
    file: str = ""


def read_multimodal(path: Path, data: DataConfig, labeled: bool = True) -> list[MultimodalExample]:
    """Read a multimodal JSONL file; text and label are checked as ``read_table`` checks them."""
    path = Path(path)
    if path.suffix.lower() not in JSON_SUFFIXES:
        raise FmkitError(f"{path}: multimodal data must be JSONL (one object a line, suffix .jsonl)")
    texts = read_table(path, data.text_column, data.label_column if labeled else None, data.text_pair_column)
    rows = dict(_json_rows(path, read_lines(path)))
    parse = _RowParser(path, data)
    return [
        MultimodalExample(e.text, e.label, e.line, e.text_pair, image=parse.image(rows[e.line], e.line),
                          features=parse.features(rows[e.line], e.line), file=str(path))
        for e in texts
    ]


class _RowParser:
    """Reads the non-text fields of one file's rows; remembers the first array shape and feature count."""

    def __init__(self, path: Path, data: DataConfig):
        self.path, self.data = path, data
        self.array_shape: tuple[tuple[int, ...], int] | None = None  # (shape, line) of the first array
        self.feature_count: tuple[int, int] | None = None  # (count, line) of the first feature vector

    def image(self, row: dict, line: int) -> np.ndarray | None:
        column = self.data.image_column
        value = row.get(column)
        where = f"{self.path}:{line}"
        if value is None:
            return None
        if isinstance(value, str) and not value.lower().endswith(".npy"):
            pixels = _read_image_file(self.path.parent / value, f"{where}: {column!r}")
        elif isinstance(value, (str, list)):
            pixels = self._array(value, line)
        else:
            raise FmkitError(f"{where}: {column!r} must be an image path or a nested list of pixels, "
                             f"not {type(value).__name__}")
        return _resize(pixels, self.data.image_size).transpose(2, 0, 1).copy()

    def _array(self, value: str | list, line: int) -> np.ndarray:
        """A .npy file or nested list as H x W x 3 floats in [0, 1]; all arrays of a file share a shape."""
        where = f"{self.path}:{line}"
        if isinstance(value, str):
            file = self.path.parent / value
            try:
                array = np.load(file, allow_pickle=False)
            except FileNotFoundError:
                raise FmkitError(f"{where}: array file {value} does not exist") from None
            except (OSError, ValueError) as exc:
                raise FmkitError(f"{where}: {value} is not a readable .npy array ({exc})") from None
        else:
            try:
                array = np.asarray(value)
            except ValueError:
                raise FmkitError(f"{where}: the pixel lists are ragged (rows of different lengths)") from None
        if array.dtype.kind not in "iuf":
            raise FmkitError(f"{where}: pixel values must be numbers (got {array.dtype.name} values)")
        if self.array_shape is None:
            self.array_shape = (array.shape, line)
        elif array.shape != self.array_shape[0]:
            shape, first = self.array_shape
            raise FmkitError(f"{where}: image array of shape {array.shape}, but line {first} has shape {shape}")
        return _pixels(array, where)

    def features(self, row: dict, line: int) -> np.ndarray | None:
        columns = self.data.feature_columns
        where = f"{self.path}:{line}"
        present = [c for c in columns if row.get(c) is not None]
        if not present:
            return None
        if len(present) < len(columns):
            absent = ", ".join(repr(c) for c in columns if c not in present)
            raise FmkitError(f"{where}: feature column {absent} missing (a row has all feature columns or none)")
        values: list[float] = []
        for column in columns:
            items = row[column] if isinstance(row[column], list) else [row[column]]
            for item in items:
                if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                    raise FmkitError(f"{where}: feature {column!r} holds {item!r}, not a finite number")
                values.append(float(item))
        if not values:
            raise FmkitError(f"{where}: the feature columns hold no values")
        if self.feature_count is None:
            self.feature_count = (len(values), line)
        elif len(values) != self.feature_count[0]:
            count, first = self.feature_count
            raise FmkitError(f"{where}: {len(values)} feature values, but line {first} has {count}")
        return np.asarray(values, dtype=np.float32)


def _read_image_file(file: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not file.is_file():
        raise FmkitError(f"{what}: image file {file} does not exist")
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise FmkitError(f"{what}: {file} is not an image Pillow can read ({type(exc).__name__})") from None


def _pixels(array: np.ndarray, where: str) -> np.ndarray:
    """H x W or H x W x C (C = 1, 3 or 4) numbers -> H x W x 3 floats in [0, 1]: integers are 0-255."""
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))) or 0 in array.shape:
        raise FmkitError(f"{where}: expected H x W or H x W x C pixels (C = 1, 3 or 4), got shape {array.shape}")
    top = 255 if array.dtype.kind in "iu" else 1
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
        raise FmkitError(f"{where}: pixel values must lie in [0, 1] (floats) or [0, 255] (integers)")
    values = values / top
    if values.ndim == 2:
        values = values[:, :, None]
    return np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[:, :, :3]


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of H x W x 3 floats to size x size (Pillow, one channel at a time)."""
    if pixels.shape[:2] == (size, size):
        return pixels
    from PIL import Image

    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, c])).resize((size, size), Image.BILINEAR))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def task_inputs(data: DataConfig, train: Sequence[MultimodalExample],
                others: Sequence[Sequence[MultimodalExample]]) -> dict[str, Any]:
    """What the Task records about the non-text inputs: the modalities of the training rows, the image
    size, whether rows may lack one, and feature statistics from the training split only. Every
    example of every split is checked against it."""
    modalities = [m for m in (IMAGE, FEATURES) if any(getattr(e, m) is not None for e in train)]
    if not modalities:
        columns = ", ".join(repr(c) for c in [data.image_column, *data.feature_columns])
        raise FmkitError(f"{train[0].file}: no training row has an image or features ({columns}): nothing to fuse")
    inputs: dict[str, Any] = {"modalities": modalities, "image_size": data.image_size, "missing": data.allow_missing}
    if FEATURES in modalities:
        matrix = np.stack([e.features for e in train if e.features is not None]).astype(np.float64)
        std = matrix.std(axis=0)
        inputs["feature_mean"] = matrix.mean(axis=0).tolist()
        inputs["feature_std"] = np.where(std > 1e-8, std, 1.0).tolist()
    for example in [*train, *(e for part in others for e in part)]:
        model_extras(example, inputs)
    return inputs


def model_extras(example: MultimodalExample, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The batch entries of one example: pixel values, standardised features and, when rows may lack
    a modality, ``image_missing`` / ``features_missing`` flags (the missing input is zeros)."""
    extras: dict[str, np.ndarray] = {}
    where = f"{example.file}:{example.line}"
    for modality in inputs["modalities"]:
        value = getattr(example, modality)
        if value is None and not inputs["missing"]:
            raise FmkitError(f"{where}: no {modality}, which the training rows have; set data.allow_missing=true "
                             "to learn a 'missing' embedding instead")
        if inputs["missing"]:
            extras[f"{modality}_missing"] = np.bool_(value is None)
        if modality == FEATURES:
            value = _standardised(value, inputs, where)
        elif value is None:
            value = np.zeros((3, inputs["image_size"], inputs["image_size"]), dtype=np.float32)
        extras[BATCH_KEYS[modality]] = value
    return extras


def _standardised(values: np.ndarray | None, inputs: dict[str, Any], where: str) -> np.ndarray:
    mean, std = np.asarray(inputs["feature_mean"]), np.asarray(inputs["feature_std"])
    if values is None:
        return np.zeros(len(mean), dtype=np.float32)
    if len(values) != len(mean):
        raise FmkitError(f"{where}: {len(values)} feature values, but the training data has {len(mean)}")
    return ((values - mean) / std).astype(np.float32)
