"""Test helpers for fmkit and for plugin authors: a tiny random BERT (hidden 32, 2 layers, own WordPiece
vocabulary) and a trivially learnable NER data set, so a plugin's end-to-end test is offline and takes
seconds. torch and transformers load only when a model is made."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Iterator

PERSONS = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "rome", "berlin"]
FILLER = ["the", "a", "went", "to", "saw", "and", "in", "met", "today", "with", "big", "old"]
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"

FAST_TRAIN = ["train.epochs=8", "train.lr=3e-3", "train.batch_size=16", "train.progress=false", "train.warmup_ratio=0",
              "train.precision=no"]
"""``--set`` values that make the tiny model learn the synthetic tagging task (test F1 >= 0.9) in seconds, in
fp32: a test's numbers must not depend on whether the machine has bf16 (``train.precision=auto``), and bf16
kernels round differently with the number of threads (a Ray worker's, say)."""


def fast_train_options() -> dict[str, Any]:
    """FAST_TRAIN as ``fmkit.run(train=...)`` takes it: ``{"epochs": 8, "lr": 0.003, ...}``, read as ``--set``."""
    import yaml

    return {key.split(".", 1)[1]: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in FAST_TRAIN)}


def set_flags(*settings: str, fast: bool = True) -> list[str]:
    """``--set S`` for each setting, after FAST_TRAIN's (unless ``fast=False``): a test's command line."""
    return [x for s in (*(FAST_TRAIN if fast else ()), *settings) for x in ("--set", str(s))]


def data_flags(files: dict[str, Path]) -> list[str]:
    """``--train F --dev F --test F`` for the splits of ``write_ner_files`` (or any such mapping)."""
    return [x for split in ("train", "dev", "test") if split in files for x in (f"--{split}", str(files[split]))]


def tiny_vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(LETTERS) + [f"##{c}" for c in LETTERS] + list(".,!?@#-'")
    return special + PERSONS + PLACES + ["new", "york"] + FILLER + ["good", "bad", "great", "awful"] + pieces


def make_tiny_model(directory: Path, **config_overrides: object) -> Path:
    """Save a random BertModel + tokenizer in ``directory``: a foundation for fast tests (seeded)."""
    import torch
    import transformers

    vocab = tiny_vocab()
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **config_overrides,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def put_in_hub_cache(model_dir: Path, cache_dir: Path, hub_id: str) -> Path:
    """Copy ``model_dir`` into ``cache_dir`` as huggingface_hub caches the hub model ``hub_id`` (one snapshot,
    ``refs/main`` pointing at it): with ``HF_HUB_CACHE=cache_dir`` and offline, ``hub_id`` loads as if it had
    been downloaded. For tests of what names a model by its hub id, without the hub."""
    import shutil

    revision = "0" * 40
    repository = Path(cache_dir) / f"models--{hub_id.replace('/', '--')}"
    (repository / "refs").mkdir(parents=True, exist_ok=True)
    (repository / "refs" / "main").write_text(revision)
    snapshot = repository / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    return snapshot


def reproducible_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` less what the machine measured (times, peak memory): the part that must
    be identical when the same run is repeated, resumed or given its plugins in another order."""
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for measured in ("seconds", "peak_memory_mb", "peak_gpu_memory_mb"):
        metrics.pop(measured, None)
    for member in metrics.get("members", {}).values():
        member.pop("train_seconds", None)
    return metrics


def synthetic_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Names are persons, cities (and 'new york') are places: learnable from the word alone."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        tokens: list[tuple[str, str]] = []
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.15:
                tokens.append((rng.choice(PERSONS), "B-PER"))
            elif r < 0.25:
                tokens.append((rng.choice(PLACES), "B-LOC"))
            elif r < 0.3:
                tokens += [("new", "B-LOC"), ("york", "I-LOC")]
            else:
                tokens.append((rng.choice(FILLER), "O"))
        sentences.append(tokens)
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], sep: str = "\t") -> Path:
    path.write_text("\n\n".join("\n".join(f"{w}{sep}{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return path


def write_ner_files(directory: Path, train: int = 240, dev: int = 40, test: int = 40) -> dict[str, Path]:
    """``train``/``dev``/``test`` CoNLL files of synthetic sentences in ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {"train": (train, 1), "dev": (dev, 2), "test": (test, 3)}
    return {split: write_conll(directory / f"{split}.conll", synthetic_sentences(n, seed))
            for split, (n, seed) in sizes.items()}


@contextlib.contextmanager
def installed_plugin(name: str, cls: type | None, error: Exception | None = None,
                     distribution: str = "test-plugin") -> Iterator[None]:
    """Within the block, ``cls`` is discovered as the installed plugin ``name``, as if a package declared it
    in the ``fmkit`` entry-point group; with ``error``, as a package whose import fails that way. For tests
    of a plugin before it is packaged (and of discovery itself)."""
    from importlib import metadata

    from fmkit.registry import refresh

    class EntryPoint:
        group, value = "fmkit", f"{distribution.replace('-', '_')}:{getattr(cls, '__name__', 'Plugin')}"
        dist = type("Distribution", (), {"name": distribution, "version": "0.1"})()

        def load(self) -> type | None:
            if error is not None:
                raise error
            return cls

    entry = EntryPoint()
    entry.name = name
    real = metadata.entry_points

    def entry_points(**selection: Any) -> Any:
        found = real(**selection)
        return [*found, entry] if selection.get("group") == "fmkit" else found

    metadata.entry_points = entry_points  # type: ignore[assignment]
    refresh()  # discovery is read once per process
    try:
        yield
    finally:
        metadata.entry_points = real
        refresh()
