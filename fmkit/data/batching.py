"""Dynamic padding and length bucketing: batches of similar length, padded to their own longest."""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

from fmkit.data.encode import IGNORE, Feature


class BucketBatchSampler:
    """Yields lists of feature indices; similar lengths share a batch.

    Training order: shuffle (seeded by seed + epoch), sort within pools of ``pool`` batches by
    length, cut into batches, shuffle the batches. Prediction order (``shuffle=False``): by length.
    Indices may repeat (bootstrap samples) and may carry weights via the collator.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, pool: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool = pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            order.sort(key=lambda i: self.lengths[i])
            yield from (order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size))
            return
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        rng.shuffle(order)
        size = self.batch_size * self.pool
        batches = []
        for p in range(0, len(order), size):
            chunk = sorted(order[p : p + size], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        yield from batches


class Collator:
    """Pads a list of features to the batch's longest; returns tensors the model and loss take."""

    def __init__(self, pad_id: int, weights: Sequence[float] | None = None):
        self.pad_id = pad_id
        self.weights = weights

    def __call__(self, items: list[tuple[int, Feature]]) -> dict:
        import numpy as np
        import torch

        features = [f for _, f in items]
        width = max(len(f) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, : len(f)] = torch.tensor(f.input_ids)
            mask[row, : len(f)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if features[0].token_type_ids is not None:
            types = torch.zeros((len(features), width), dtype=torch.long)
            for row, f in enumerate(features):
                types[row, : len(f)] = torch.tensor(f.token_type_ids)
            batch["token_type_ids"] = types
        if features[0].labels is not None:
            if isinstance(features[0].labels, list):
                labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
                for row, f in enumerate(features):
                    labels[row, : len(f)] = torch.tensor(f.labels)
            else:
                labels = torch.tensor([f.labels for f in features], dtype=torch.long)
            batch["labels"] = labels
        for key in features[0].extra or {}:
            batch[key] = torch.as_tensor(np.stack([f.extra[key] for f in features]))
        if self.weights is not None:
            batch["weights"] = torch.tensor([self.weights[i] for i, _ in items], dtype=torch.float)
        return batch


class IndexedFeatures:
    """A map-style dataset of (position, feature); ``rows`` lets a member train on a resample."""

    def __init__(self, features: Sequence[Feature], rows: Sequence[int] | None = None):
        self.features = features
        self.rows = list(rows) if rows is not None else list(range(len(features)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[int, Feature]:
        return position, self.features[self.rows[position]]

    @property
    def lengths(self) -> list[int]:
        return [len(self.features[r]) for r in self.rows]


def prediction_batches(features: Sequence[Feature], batch_size: int, pad_id: int,
                       device: Any = None) -> Iterator[tuple[list[int], dict]]:
    """The features in length-sorted batches padded to their own longest, on ``device``, each with the
    positions in ``features`` of its rows: how every split is scored, by the core and by plugins
    that read what a model computes (cached features, per-modality reports). NER batches carry
    ``word_mask``, the positions whose prediction is a word's (not a model input: what an ensemble
    checks before it skips members, ``Ensemble.predict_proba``)."""
    import torch

    dataset = IndexedFeatures(features)
    collate = Collator(pad_id)
    for indices in BucketBatchSampler(dataset.lengths, batch_size, shuffle=False):
        batch = collate([dataset[i] for i in indices])
        if features[indices[0]].word_positions is not None:
            batch["word_mask"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
            for row, i in enumerate(indices):
                batch["word_mask"][row, [position for _, position in features[i].word_positions]] = True
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        yield indices, batch
