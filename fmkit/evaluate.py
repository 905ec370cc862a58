"""Prediction and metrics: seqeval entity-level P/R/F1 for NER, accuracy and macro-F1 for classify.

NER predictions are made per word (first sub-token), merged across windows, then decoded with the
tagging scheme's legal transitions (a Viterbi pass over the word probabilities), so every output
is a valid span sequence. Gold labels are compared as strings: labels the model never saw in
training still count as misses.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fmkit.data.batching import prediction_batches
from fmkit.data.encode import Feature
from fmkit.data.schemes import allowed_transitions
from fmkit.types import Task

PredictFn = Callable[[dict], Any]  # batch -> class probabilities (torch.Tensor)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids",  # then the multimodal ones:
                "pixel_values", "features", "categories", "image_missing", "features_missing")


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that the task model takes (not labels or weights)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def softmax_predictor(model: Any) -> PredictFn:
    """Turn a task model into a batch -> probabilities function."""
    import torch

    def predict(batch: dict) -> torch.Tensor:
        return torch.softmax(model(**model_inputs(batch)).logits.float(), dim=-1)

    return predict


def member_probabilities(models: Sequence[Any], batch: dict) -> Any:
    """(members, batch, [tokens,] classes): each model's probabilities. Members on one shared backbone
    (``types.SharedBackbone``) are asked to batch them; any others run one by one."""
    import torch

    shared = getattr(models[0], "shared_backbone", None)
    if shared is not None and all(getattr(m, "shared_backbone", None) is shared for m in models):
        probs = shared.probabilities(models, batch)
        if probs is not None:
            return probs
    return torch.stack([softmax_predictor(m)(batch) for m in models])


def example_probs(task: Task, features: Sequence[Feature], n_examples: int, predict: PredictFn,
                  batch_size: int, pad_id: int, device: Any = None, progress: str | None = None) -> list[np.ndarray]:
    """Probabilities per example: (words, classes) for NER (windows merged), (classes,) otherwise. ``progress``:
    the name of a progress bar over the windows (as training's: shown on a terminal only), None for none."""
    import torch
    from tqdm.auto import tqdm

    out: list[Any] = [None] * n_examples
    if task.kind == "ner":
        sizes = [0] * n_examples
        for f in features:
            for word, _ in f.word_positions:
                sizes[f.example] = max(sizes[f.example], word + 1)
        out = [np.zeros((n, len(task.labels)), dtype=np.float32) for n in sizes]
    bar = tqdm(total=len(features), desc=progress, unit="window", leave=False, dynamic_ncols=True,
               disable=True if progress is None else None)  # None: off without a TTY
    with torch.inference_mode(), bar:
        for indices, batch in prediction_batches(features, batch_size, pad_id, device):
            probs = predict(batch).float().cpu().numpy()
            bar.update(len(indices))
            for row, i in enumerate(indices):
                f = features[i]
                if task.kind == "ner":
                    for word, position in f.word_positions:
                        out[f.example][word] = probs[row, position]
                else:
                    out[f.example] = probs[row]
    return out


def decode(task: Task, probs: np.ndarray) -> list[str]:
    """Most likely label sequence for one sentence that respects the scheme (Viterbi in log space)."""
    start, follow, end = _transition_masks(task)
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    n = len(logp)
    if n == 0:
        return []
    score = logp[0] + start
    back = np.zeros((n, len(task.labels)), dtype=np.int64)
    for t in range(1, n):
        candidates = score[:, None] + follow  # prev x next
        back[t] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + logp[t]
    best = int((score + end).argmax())
    path = [best]
    for t in range(n - 1, 0, -1):
        best = int(back[t, best])
        path.append(best)
    return [task.labels[i] for i in reversed(path)]


_MASKS: dict[tuple, tuple] = {}


def _transition_masks(task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = (tuple(task.labels), task.scheme)
    if key not in _MASKS:
        start, follow, end = allowed_transitions(task.labels, task.scheme or "IOB2")
        to_log = lambda allowed: np.where(np.asarray(allowed), 0.0, -1e9)  # noqa: E731
        _MASKS[key] = (to_log(start), to_log(follow), to_log(end))
    return _MASKS[key]


def labels_from_probs(task: Task, probs: list[np.ndarray]) -> list:
    """Decoded label sequences (NER) or labels (classify)."""
    if task.kind == "ner":
        return [decode(task, p) for p in probs]
    return [task.labels[int(p.argmax())] for p in probs]


def scores(task: Task, gold: list, predicted: list) -> dict[str, Any]:
    """The task's metrics, all in [0, 1], with the per-label report as text under ``report``."""
    if task.kind == "ner":
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
        from seqeval.scheme import IOB2, IOBES

        kwargs = {"mode": "strict", "scheme": IOBES if task.scheme == "IOBES" else IOB2}
        return {
            "f1": float(f1_score(gold, predicted, zero_division=0, **kwargs)),
            "precision": float(precision_score(gold, predicted, zero_division=0, **kwargs)),
            "recall": float(recall_score(gold, predicted, zero_division=0, **kwargs)),
            "report": classification_report(gold, predicted, digits=4, zero_division=0, **kwargs),
        }
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "report": classification_report(gold, predicted, digits=4, zero_division=0),
    }


def per_type_scores(task: Task, gold: list, predicted: list) -> dict[str, dict[str, float]]:
    """``{type: {precision, recall, f1, support}}``: per entity type (NER, seqeval strict, as ``scores``) or
    per label (classify), the numbers of the text report, for metrics.json and report.html."""
    if task.kind == "ner":
        from seqeval.metrics import classification_report
        from seqeval.scheme import IOB2, IOBES

        table = classification_report(gold, predicted, output_dict=True, zero_division=0, mode="strict",
                                      scheme=IOBES if task.scheme == "IOBES" else IOB2)
    else:
        from sklearn.metrics import classification_report

        table = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {str(name): {"precision": float(row["precision"]), "recall": float(row["recall"]),
                        "f1": float(row["f1-score"]), "support": int(row["support"])}
            for name, row in table.items() if isinstance(row, dict) and not name.endswith(" avg")}


def gold_labels(task: Task, examples: Sequence) -> list:
    """What the metrics compare predictions with: each sentence's tags (ner) or each example's label."""
    return [e.tags for e in examples] if task.kind == "ner" else [e.label for e in examples]


def attack_success_rate(gold: list, clean: list, attacked: list) -> float:
    """Share of the examples predicted right without the attack (the label, or every word's tag)
    that the attack makes wrong; 0 when none was right."""
    right = [i for i, (g, c) in enumerate(zip(gold, clean)) if g == c]
    return sum(attacked[i] != gold[i] for i in right) / len(right) if right else 0.0
