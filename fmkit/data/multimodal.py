"""Multimodal rows for ``--task multimodal``: text and a label, plus an image and/or tabular features
(numbers and categories), from JSONL or from a CSV/TSV table with a header.

Images (a PNG/JPEG path relative to the file, a ``.npy`` path, or in JSONL a nested list of pixels)
become 3 x S x S float32 arrays in [0, 1] (S = ``data.image_size``); normalisation belongs to the
model, so an attack can work in pixel space. Numbers and categories stay raw here (a missing number
is NaN): ``task_inputs`` learns from the training split how to encode them (medians, missing-value
indicators, standardisation or quantiles, category levels), the Task keeps it (config.json saves it),
and ``model_extras`` applies it to every split, so eval and predict encode new files exactly as
training did. Every bad row is a one-line FmkitError naming the file and line.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmkit.config import DataConfig
from fmkit.data.readers import TextExample, check_columns, is_missing, table_rows, text_example
from fmkit.errors import FmkitError

IMAGE, FEATURES = "image", "features"
BATCH_KEYS = {IMAGE: "pixel_values", FEATURES: "features"}  # what the fused model's forward takes
CATEGORIES = "categories"  # batch key of the category indices (part of the features modality)
UNKNOWN = 0  # the category index of a value the training rows never had
MISSING_CATEGORY = "(missing)"  # the level of an empty category cell
SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
QUANTILES = 1000  # reference points of the quantile transform (at most one per training row)


@dataclass
class MultimodalExample(TextExample):
    """A text example with its image (3 x S x S in [0, 1]), raw numbers (NaN where missing) and categories
    (strings); each may be None when the row has none of them."""

    image: np.ndarray | None = None
    features: np.ndarray | None = None
    categories: tuple[str, ...] | None = None
    file: str = ""


def tabular_columns(data: DataConfig) -> dict[str, list[str]]:
    """The categorical and feature columns the user declared, by option (feature columns left at
    their default are looked for, not required)."""
    declared = {"data.categorical_columns": list(data.categorical_columns)}
    if data.feature_columns != _default("feature_columns"):  # (a saved config sets every option)
        declared["data.feature_columns"] = list(data.feature_columns)
    return {option: columns for option, columns in declared.items() if columns}


def _default(option: str) -> Any:
    """The default of a ``data.*`` option."""
    field = DataConfig.model_fields[option]
    return field.default_factory() if field.default_factory else field.default


def read_multimodal(path: Path, data: DataConfig, labeled: bool = True) -> list[MultimodalExample]:
    """Read a multimodal JSONL, CSV or TSV file: every column an option names must exist (a default column
    may be absent); text and label are checked as ``read_table`` checks them."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise FmkitError(f"{path}: multimodal data must be JSONL (.jsonl), CSV (.csv) or TSV (.tsv)")
    rows, columns = table_rows(path)
    texts = [data.text_column] if isinstance(data.text_column, str) else list(data.text_column)
    label = data.label_column if labeled else None
    tabular = tabular_columns(data)
    declared = {"data.text_column": texts, "data.label_column": [label] if label else [], **tabular}
    if data.image_column != _default("image_column"):
        declared["data.image_column"] = [data.image_column]
    check_columns(path, columns, declared)
    numbers = [c for c in data.feature_columns if c in columns]
    categories = list(data.categorical_columns)
    as_text = [*categories, *numbers] if data.all_as_text else []
    parse = _RowParser(path, data, [] if as_text else numbers, [] if as_text else categories)
    examples = []
    for number, row in rows:
        example = text_example(path, number, row, texts, label, data.text_pair_column, as_text, empty_text=True)
        examples.append(MultimodalExample(example.text, example.label, number, example.text_pair,
                                          image=parse.image(row, number), features=parse.numbers(row, number),
                                          categories=parse.categories(row), file=str(path)))
    if not examples:
        raise FmkitError(f"{path}: no examples found")
    return examples


class _RowParser:
    """Reads the non-text fields of one file's rows; remembers the first array shape and each numeric
    column's width (a JSONL key may hold a list)."""

    def __init__(self, path: Path, data: DataConfig, numbers: list[str], categories: list[str]):
        self.path, self.data, self.number_columns, self.category_columns = path, data, numbers, categories
        self.array_shape: tuple[tuple[int, ...], int] | None = None  # (shape, line) of the first array
        self.widths: dict[str, tuple[int, int]] = {}  # column -> (values, line) of its first value

    def image(self, row: dict, line: int) -> np.ndarray | None:
        column = self.data.image_column
        value = row.get(column)
        where = f"{self.path}:{line}"
        if is_missing(value):
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

    def numbers(self, row: dict, line: int) -> np.ndarray | None:
        """The row's numbers, NaN where a value is missing; None when a JSONL row has none of the keys."""
        columns = self.number_columns
        if not columns or not any(c in row for c in columns):
            return None
        where = f"{self.path}:{line}"
        values: list[float] = []
        for column in columns:
            cell = row.get(column)
            if isinstance(cell, list):
                items = [self._number(item, column, where) for item in cell]
            else:
                items = [self._number(cell, column, where)]
            if is_missing(cell):  # a missing cell stands for as many values as the column holds
                items = items * self.widths.get(column, (1, line))[0]
            else:
                width, first = self.widths.setdefault(column, (len(items), line))
                if len(items) != width:
                    raise FmkitError(f"{where}: {len(items)} values in feature {column!r}, "
                                     f"but line {first} has {width}")
            values.extend(items)
        return np.asarray(values, dtype=np.float32)

    @staticmethod
    def _number(value: Any, column: str, where: str) -> float:
        """A finite number, NaN for a missing value; anything else is an error naming the file and line."""
        if is_missing(value):
            return math.nan
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise FmkitError(f"{where}: feature {column!r} holds {value!r}, not a finite number")
        return number

    def categories(self, row: dict) -> tuple[str, ...] | None:
        """The row's categories as strings (``MISSING_CATEGORY`` for an empty cell); None when a JSONL row
        has none of the keys."""
        columns = self.category_columns
        if not columns or not any(c in row for c in columns):
            return None
        return tuple(MISSING_CATEGORY if is_missing(row.get(c)) else str(row[c]).strip() for c in columns)


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
    size, whether rows may lack one, and how tabular features are encoded (learned from the training
    split only, see ``tabular_encoding``). Every example of every split is checked against it."""
    modalities = [IMAGE] if any(e.image is not None for e in train) else []
    if any(e.features is not None or e.categories is not None for e in train):
        modalities.append(FEATURES)
    if not modalities:
        columns = ", ".join(repr(c) for c in [data.image_column, *data.feature_columns, *data.categorical_columns])
        hint = "; with data.all_as_text the table is text: use --task classify" if data.all_as_text else ""
        raise FmkitError(f"{train[0].file}: no training row has an image or features ({columns}): nothing to fuse"
                         + hint)
    inputs: dict[str, Any] = {"modalities": modalities, "image_size": data.image_size, "missing": data.allow_missing}
    if FEATURES in modalities:
        inputs.update(tabular_encoding(data, train))
    for example in [*train, *(e for part in others for e in part)]:
        model_extras(example, inputs)
    return inputs


def tabular_encoding(data: DataConfig, train: Sequence[MultimodalExample]) -> dict[str, Any]:
    """How numbers and categories become model inputs, from the training rows only.

    Numbers: a missing value takes the column's training median, and each column with a missing value
    in training gains a 0/1 "was missing" feature; then every column is standardised (mean 0, sd 1) or,
    with ``data.numeric_transform=quantile``, mapped through its training quantiles to a standard normal.
    Categories: each column's training levels, most frequent first (index 0 is "unknown"); a column
    with a single level is an error. Kept in ``task.inputs`` (saved in config.json)."""
    encoding: dict[str, Any] = {}
    rows = [e.features for e in train if e.features is not None]
    if rows:
        first = next(e for e in train if e.features is not None)
        for example in train:
            if example.features is not None and len(example.features) != len(first.features):
                raise FmkitError(f"{example.file}:{example.line}: {len(example.features)} feature values, "
                                 f"but line {first.line} has {len(first.features)}")
        matrix = np.stack(rows).astype(np.float64)
        missing = np.isnan(matrix)
        median = np.array([np.median(c[~m]) if (~m).any() else 0.0 for c, m in zip(matrix.T, missing.T)])
        imputed = np.where(missing, median, matrix)
        encoding.update(feature_median=median.tolist(), feature_indicators=np.flatnonzero(missing.any(0)).tolist(),
                        feature_transform=data.numeric_transform)
        if data.numeric_transform == "quantile":
            points = np.linspace(0, 1, min(QUANTILES, len(imputed)))
            encoding["feature_quantiles"] = np.quantile(imputed, points, axis=0).T.tolist()
        else:
            std = imputed.std(axis=0)
            encoding["feature_mean"] = imputed.mean(axis=0).tolist()
            encoding["feature_std"] = np.where(std > 1e-8, std, 1.0).tolist()
    encoding["feature_count"] = len(_numbers(rows[0], encoding)) if rows else 0
    labelled = [e.categories for e in train if e.categories is not None]
    if labelled:
        encoding["category_columns"], encoding["category_levels"] = list(data.categorical_columns), []
        for i, column in enumerate(data.categorical_columns):
            counts = Counter(row[i] for row in labelled)
            levels = sorted(counts, key=lambda level: (-counts[level], level))
            if len([level for level in levels if level != MISSING_CATEGORY]) < 2:
                raise FmkitError(f"data.categorical_columns: {column!r} has a single level in the training rows of "
                                 f"{train[0].file} ({levels[0]!r}): it cannot tell rows apart; leave it out")
            encoding["category_levels"].append(levels)
    return encoding


def model_extras(example: MultimodalExample, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The batch entries of one example: pixel values, encoded numbers, category indices (0 for a level
    unseen in training) and, when rows may lack a modality, ``image_missing`` / ``features_missing``
    flags (the missing input is zeros)."""
    extras: dict[str, np.ndarray] = {}
    where = f"{example.file}:{example.line}"
    for modality in inputs["modalities"]:
        value = example.image
        absent = value is None if modality == IMAGE else example.features is None and example.categories is None
        if absent and not inputs["missing"]:
            raise FmkitError(f"{where}: no {modality}, which the training rows have; set data.allow_missing=true "
                             "to learn a 'missing' embedding instead")
        if inputs["missing"]:
            extras[f"{modality}_missing"] = np.bool_(absent)
        if modality == IMAGE:
            size = inputs["image_size"]
            extras[BATCH_KEYS[IMAGE]] = value if value is not None else np.zeros((3, size, size), dtype=np.float32)
            continue
        raw = len(inputs.get("feature_median", inputs.get("feature_mean", [])))  # (runs saved before medians)
        if example.features is not None and len(example.features) != raw:
            raise FmkitError(f"{where}: {len(example.features)} feature values, but the training data has {raw}")
        extras[BATCH_KEYS[FEATURES]] = (_numbers(example.features, inputs) if example.features is not None
                                        else np.zeros(inputs.get("feature_count", raw), dtype=np.float32))
        if "category_levels" in inputs:
            extras[CATEGORIES] = category_indices(example.categories, inputs)
    return extras


def category_indices(categories: Sequence[str] | None, inputs: dict[str, Any]) -> np.ndarray:
    """Each category's index in its column's training levels, from 1; ``UNKNOWN`` (0) when unseen or absent."""
    levels = inputs["category_levels"]
    if categories is None:
        return np.zeros(len(levels), dtype=np.int64)
    return np.array([column.index(c) + 1 if c in column else UNKNOWN for c, column in zip(categories, levels)],
                    dtype=np.int64)


def unseen_categories(examples: Sequence[MultimodalExample], inputs: dict[str, Any]) -> dict[str, int]:
    """How many of ``examples`` have a category the training rows never had, per column (columns with none left out)."""
    counts = {column: 0 for column in inputs.get("category_columns", [])}
    for example in examples:
        if example.categories is not None:
            for column, index in zip(counts, category_indices(example.categories, inputs)):
                counts[column] += int(index == UNKNOWN)
    return {column: count for column, count in counts.items() if count}


def _numbers(values: np.ndarray, inputs: dict[str, Any]) -> np.ndarray:
    """Raw numbers (NaN where missing) encoded as ``tabular_encoding`` learned: imputed, transformed, then
    the "was missing" indicators."""
    values = values.astype(np.float64)
    missing = np.isnan(values)
    if "feature_median" in inputs:
        values = np.where(missing, np.asarray(inputs["feature_median"]), values)
    if inputs.get("feature_transform") == "quantile":
        encoded = np.array([_normal_quantile(v, np.asarray(q)) for v, q in zip(values, inputs["feature_quantiles"])])
    else:
        encoded = (values - np.asarray(inputs["feature_mean"])) / np.asarray(inputs["feature_std"])
    indicators = missing[inputs.get("feature_indicators", [])].astype(np.float64)
    return np.concatenate([encoded, indicators]).astype(np.float32)


def _normal_quantile(value: float, references: np.ndarray) -> float:
    """``value``'s place among a column's training quantiles, as a standard normal score (as scikit-learn's
    QuantileTransformer: ties averaged, clipped to the 1e-7 tails)."""
    from statistics import NormalDist

    points = np.linspace(0, 1, len(references))
    rank = 0.5 * (np.interp(value, references, points) - np.interp(-value, -references[::-1], -points[::-1]))
    return NormalDist().inv_cdf(float(np.clip(rank, 1e-7, 1 - 1e-7)))
