"""The default task model: a transformers classification head on the text foundation."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from fmkit.errors import FmkitError
from fmkit.types import Foundation, Task


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (fmkit reports what matters itself)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class TextModelBuilder:
    """Builds ``AutoModelFor{Token,Sequence}Classification`` with the task's label maps in its config,
    so a saved model loads with plain transformers."""

    def __init__(self, foundation: Foundation, task: Task, trust_remote_code: bool = False):
        self.foundation = foundation
        self.task = task
        self.trust_remote_code = trust_remote_code

    def _auto_class(self) -> Any:
        import transformers

        if self.task.kind == "ner":
            return transformers.AutoModelForTokenClassification
        if self.task.kind == "classify":
            return transformers.AutoModelForSequenceClassification
        raise FmkitError(f"task {self.task.kind!r} needs a fuse plugin (e.g. --plugins concat)")

    def build(self) -> Any:
        with quiet_transformers():
            return self._auto_class().from_pretrained(
                self.foundation.path,
                num_labels=len(self.task.labels),
                id2label=dict(enumerate(self.task.labels)),
                label2id=self.task.label2id,
                trust_remote_code=self.trust_remote_code,
            )

    def load(self, directory: Path) -> Any:
        if not (Path(directory) / "config.json").is_file():
            raise FmkitError(f"{directory}: no saved model (config.json missing)")
        with quiet_transformers():
            return self._auto_class().from_pretrained(directory, trust_remote_code=self.trust_remote_code)


def output_layer(module: Any, num_labels: int) -> Any:
    """The last linear layer of ``module`` that produces ``num_labels`` scores (the class scores of
    a task head), or None."""
    from torch import nn

    return next((m for m in reversed(list(module.modules()))
                 if isinstance(m, nn.Linear) and m.out_features == num_labels), None)


def start_at_label_prior(model: Any, task: Task, examples: Sequence[Any]) -> None:
    """Set the output layer's bias to the log of the training labels' frequencies (add-one
    smoothed); its weights stay as initialised. A fresh head then starts at the loss of guessing the
    prior instead of spending its first, largest steps getting there. On NER, where O is about 90%
    of the tags, those steps all push one way, and at an adapter's learning rate they sent LoRA
    into predicting O everywhere on short schedules (docs/adapt.md). It is the prior initialisation
    of focal loss (Lin et al. 2017), for the same imbalance."""
    import torch

    counts: Counter[str] = Counter()
    for example in examples:
        tags = getattr(example, "tags", None)
        counts.update(tags if tags is not None else [example.label])
    layer = output_layer(model, len(task.labels))
    if layer is None or layer.bias is None:  # a head of another shape: left as its builder made it
        return
    frequencies = torch.tensor([counts[label] + 1.0 for label in task.labels])
    with torch.no_grad():
        layer.bias.copy_(torch.log(frequencies / frequencies.sum()).to(layer.bias.dtype))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
