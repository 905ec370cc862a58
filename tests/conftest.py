"""Shared fixtures: a tiny random BERT (hidden 32, 2 layers) with its own WordPiece vocabulary, and a
trivially learnable NER data set written as CoNLL files. Offline, fast and deterministic."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

PERSONS = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "rome", "berlin"]
FILLER = ["the", "a", "went", "to", "saw", "and", "in", "met", "today", "with", "big", "old"]
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def tiny_vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(LETTERS) + [f"##{c}" for c in LETTERS] + list(".,!?@#-'")
    return special + PERSONS + PLACES + ["new", "york"] + FILLER + ["good", "bad", "great", "awful"] + pieces


def make_tiny_model(directory: Path, **config_overrides) -> Path:
    """Save a random BertModel + tokenizer in ``directory``: a foundation for fast tests."""
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
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


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


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ner-data")
    return {
        "train": write_conll(root / "train.conll", synthetic_sentences(240, seed=1)),
        "dev": write_conll(root / "dev.conll", synthetic_sentences(40, seed=2)),
        "test": write_conll(root / "test.conll", synthetic_sentences(40, seed=3)),
    }


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


FAST_TRAIN = ["train.epochs=8", "train.lr=3e-3", "train.batch_size=16", "train.progress=false", "train.warmup_ratio=0"]
