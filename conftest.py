"""Fixtures shared by the core's tests (tests/), each plugin family's (plugins/*/tests/) and contrib's:
a tiny random BERT (hidden 32, 2 layers) with its own WordPiece vocabulary, and trivially learnable NER
and classification data sets. Offline, fast and deterministic. The model and NER helpers live in
``fmkit.testing`` so that plugin packages can test with them too."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fmkit.testing import FILLER, make_tiny_model, write_ner_files


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    return write_ner_files(tmp_path_factory.mktemp("ner-data"))


def synthetic_reviews(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["good", "great"] if label == "pos" else ["bad", "awful"])
        filler = rng.sample(FILLER, 4)
        filler.insert(rng.randint(0, 4), word)
        rows.append((" ".join(filler), label))
    return rows


@pytest.fixture(scope="session")
def classify_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classify-data")
    files = {}
    for split, n, seed in (("train", 200, 1), ("dev", 40, 2)):
        path = root / f"{split}.tsv"
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in synthetic_reviews(n, seed)), encoding="utf-8")
        files[split] = path
    return files


