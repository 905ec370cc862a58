"""Synthetic multimodal data sets: a text cue (the word *good* or *bad*) and image cues (the colour,
red or blue, and the shape, disc or square, of one figure on a noisy grey background); the label
says which cues matter (``--label``):

- ``word-colour`` (default): the class is word x colour, e.g. ``good-red``: four balanced classes,
  so the text alone or the image alone can get at most half of them right; each modality narrows
  the answer on its own, so an additive model can solve it.
- ``xor``: ``yes`` when exactly one of (the word is *good*, the figure is a square) holds: each
  modality alone is at chance (50%) by construction; only their interaction carries the label.
- ``and``: ``yes`` when both hold (25% of rows).
- ``shape`` or ``word``: one modality's cue alone.

Cues a label does not use (the size and place of the figure, the noise, the filler words, and the
colour outside ``word-colour``) vary at random. Images are written as PNG files beside the JSONL.

    python -m fmkit_fuse.synthetic OUT_DIR [--label xor --train 800 --dev 200 --test 400 --seed 0 --features 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

WORDS = ("good", "bad")  # in the vocabulary of the tests' tiny tokenizer too
COLOURS = {"red": (0.85, 0.15, 0.15), "blue": (0.15, 0.25, 0.85)}
FILLER = ["the", "a", "went", "to", "saw", "and", "in", "met", "today", "with", "big", "old"]
SIZE = 32


LABELS = {
    "word-colour": lambda word, colour, square: f"{word}-{colour}",
    "xor": lambda word, colour, square: "yes" if (word == "good") != square else "no",
    "and": lambda word, colour, square: "yes" if word == "good" and square else "no",
    "shape": lambda word, colour, square: "square" if square else "disc",
    "word": lambda word, colour, square: word,
}
"""Each label kind, from the row's cues: its word, its figure's colour and whether the figure is a square."""


def image(rng: np.random.Generator, colour: str) -> tuple[np.ndarray, bool]:
    """SIZE x SIZE x 3 uint8: a disc or square of ``colour`` (jittered) on a noisy grey background; and
    whether it is a square."""
    pixels = np.clip(rng.normal(0.5, 0.08, (SIZE, SIZE, 3)), 0, 1)
    radius = int(rng.integers(5, 10))
    cy, cx = rng.integers(radius, SIZE - radius, size=2)
    y, x = np.mgrid[:SIZE, :SIZE]
    square = bool(rng.random() >= 0.5)
    if square:
        inside = (abs(y - cy) <= radius * 0.8) & (abs(x - cx) <= radius * 0.8)
    else:
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    pixels[inside] = np.clip(np.asarray(COLOURS[colour]) + rng.normal(0, 0.05, 3), 0, 1)
    return (pixels * 255).round().astype(np.uint8), square


def rows(n: int, rng: np.random.Generator, image_dir: Path, prefix: str, features: int = 0,
         label: str = "word-colour") -> list[dict]:
    """``n`` rows labelled as ``LABELS[label]`` says; images go to ``image_dir`` as ``{prefix}-{i}.png``.
    ``features`` adds that many numeric columns of noise (offset and scale unlike N(0, 1), to exercise
    standardisation)."""
    from PIL import Image

    out = []
    for i in range(n):
        word, colour = WORDS[rng.integers(2)], list(COLOURS)[rng.integers(2)]
        words = [FILLER[j] for j in rng.choice(len(FILLER), size=4, replace=False)]
        words.insert(int(rng.integers(0, 5)), word)
        file = image_dir / f"{prefix}-{i}.png"
        pixels, square = image(rng, colour)
        Image.fromarray(pixels).save(file)
        row = {"text": " ".join(words), "image": f"{image_dir.name}/{file.name}",
               "label": LABELS[label](word, colour, square)}
        if features:
            row["features"] = [round(float(v), 4) for v in rng.normal(50.0, 20.0, features)]
        out.append(row)
    return out


def write(directory: Path, sizes: dict[str, int], seed: int = 0, features: int = 0,
          label: str = "word-colour") -> dict[str, Path]:
    """Write ``{split}.jsonl`` for each split of ``sizes`` (plus ``images/``), labelled as ``LABELS[label]``
    says; return the files."""
    directory = Path(directory)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in sizes.items():
        files[split] = directory / f"{split}.jsonl"
        lines = [json.dumps(row) for row in rows(n, rng, image_dir, split, features, label)]
        files[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--label", choices=list(LABELS), default="word-colour", help="what the label says")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=int, default=0, help="numeric noise columns to add")
    args = parser.parse_args(argv)
    files = write(args.directory, {"train": args.train, "dev": args.dev, "test": args.test}, args.seed, args.features,
                  args.label)
    print("\n".join(str(f) for f in files.values()))


if __name__ == "__main__":
    main()
