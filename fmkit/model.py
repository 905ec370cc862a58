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
        """The pretrained backbone with a new task head (marked new: ``train.new_lr`` applies to it)."""
        with quiet_transformers():
            model = self._auto_class().from_pretrained(
                self.foundation.path,
                num_labels=len(self.task.labels),
                id2label=dict(enumerate(self.task.labels)),
                label2id=self.task.label2id,
                trust_remote_code=self.trust_remote_code,
            )
        backbone = model.base_model
        mark_new(*(child for child in model.children() if child is not backbone))
        return model

    def load(self, directory: Path) -> Any:
        """The whole model saved in ``directory``; beside a saved adapter (a run's ``model/``), the plain model
        alone, which ``from_pretrained`` would return with the adapter already on it."""
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FmkitError(f"{directory}: no saved model (config.json missing)")
        with quiet_transformers():
            if not (directory / "adapter_config.json").is_file():
                return self._auto_class().from_pretrained(directory, trust_remote_code=self.trust_remote_code)
            from safetensors.torch import load_file
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(directory, trust_remote_code=self.trust_remote_code)
            model = self._auto_class().from_config(config, trust_remote_code=self.trust_remote_code)
        model.load_state_dict(load_file(directory / "model.safetensors"))
        return model


NEW_MODULE = "fmkit_new"  # the attribute that marks a module created from scratch; copies of the module keep it


def mark_new(*modules: Any, new: bool = True) -> None:
    """Mark modules that a ModelBuilder creates from scratch (a head, fusion layers, an encoder without
    pretrained weights): the optimizer gives their parameters ``train.new_lr``, every other parameter
    ``train.lr``. ``new=False`` marks a pretrained module inside a new one (a pretrained vision model in
    a new image branch): the nearest marked ancestor decides. A builder marks them in ``build``; the
    mark is a plain attribute, so it survives ``copy.deepcopy`` (ensemble members) and wrappers that
    keep or copy the module (PEFT's ``modules_to_save``). Adapter weights that the adapt stage adds
    inside the pretrained backbone stay unmarked: they train at ``train.lr``, the rate adapt plugins set."""
    for module in modules:
        setattr(module, NEW_MODULE, new)


def new_parameters(model: Any) -> set[int]:
    """The ids of the parameters whose nearest marked module is marked new (see ``mark_new``)."""
    found: set[int] = set()

    def walk(module: Any, inherited: bool) -> None:
        new = getattr(module, NEW_MODULE, inherited)
        if new:
            found.update(id(p) for p in module.parameters(recurse=False))
        for child in module.children():
            walk(child, new)

    walk(model, False)
    return found


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
