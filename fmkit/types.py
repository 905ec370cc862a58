"""The objects the stages exchange. Plugin authors build against these (and ``fmkit.hookspecs``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fmkit.config import RunConfig
    from fmkit.data.readers import Sentence, TextExample

Example = Union["Sentence", "TextExample"]
"""One labelled (or unlabelled) input: a ``Sentence`` of words and tags for ``ner``, a ``TextExample`` otherwise."""

Batch = dict[str, "torch.Tensor"]
"""A padded batch: ``input_ids``, ``attention_mask`` (+ ``token_type_ids``), ``labels`` when known,
``weights`` (per-example loss weights) when a combine plugin sets them, ``word_mask`` (bool, the
positions that predict a word) in NER batches being scored (``prediction_batches``). Multimodal batches also carry
``pixel_values`` (float32 N x 3 x H x W in [0, 1]; the model normalises) and/or ``features`` (float32
N x F, encoded with the training split's statistics) and ``categories`` (int64 N x C, 0 = unknown), and ``image_missing`` / ``features_missing`` (bool N) when rows may lack one."""


@dataclass
class Task:
    """What is learned: the kind of task and its label vocabulary (index = class id)."""

    kind: str
    labels: list[str]
    scheme: str | None = None  # NER tagging scheme after conversion: IOB2 or IOBES
    inputs: dict[str, Any] = field(default_factory=dict)  # multimodal: modalities, image size, train feature stats

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def primary_metric(self) -> str:
        """The dev score that selects the best epoch (and that ensembles compare)."""
        return "f1" if self.kind == "ner" else "accuracy"


@dataclass(frozen=True)
class TaskData:
    """The examples of each split, gold labels as strings (what metrics compare). Read-only: the data
    stage is the one place where training rows change (``fmkit_data``); dev and test never do."""

    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "dev", "test"):
            object.__setattr__(self, split, tuple(getattr(self, split)))


@dataclass
class Foundation:
    """What the pretrain stage returns: a backbone checkpoint directory and its tokenizer."""

    path: str
    tokenizer: Any
    source: str = ""  # what the user named: package, directory or hub id
    origin: str = ""  # the hub id these exact weights come from, when known: how a saved run names its base model


@runtime_checkable
class ModelBuilder(Protocol):
    """What the fuse stage returns: makes task models (encoder + head) for ``run.task``."""

    def build(self) -> nn.Module:
        """A fresh task model: pretrained encoder, newly initialised head. The builder marks the modules it
        creates from scratch with ``fmkit.plugin.mark_new``, so that ``train.new_lr`` reaches them; a
        model with no marks trains at ``train.lr`` throughout."""

    def load(self, directory: Path) -> nn.Module:
        """A whole task model saved with ``save_pretrained`` in ``directory``."""

    # Optional: ``member_metrics(model, prepared, splits, hardeners) -> dict`` adds entries to a trained
    # member's metrics (e.g. a fusion model's per-modality contributions and robust accuracy).


@runtime_checkable
class Hardener(Protocol):
    """What the harden stage returns: adversarial training and the attack for robust evaluation."""

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """Compute this batch's training loss, call ``backward`` on it (possibly several times,
        e.g. FreeLB's ascent steps) and return the loss, detached, for the log."""

    def attack(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of ``model`` on the adversarially perturbed batch (for robust evaluation)."""

    # Optional, for attacks that rewrite the text rather than perturb a batch (``attack = None`` then):
    # ``attack_examples(model, examples) -> (perturbed, stats)``: the labelled examples rewritten (same order,
    # same gold labels, a NER sentence keeping its word count), and the attack's cost as numbers for
    # ``metrics.json`` (``words_changed``, ``queries``, ``seconds_per_example``: means per example). The core
    # scores the rewritten examples and keeps a sample of the successful ones (``attacks.jsonl``).


@runtime_checkable
class SharedBackbone(Protocol):
    """What the adapt stage offers (``fmkit_adapt_share``) when ensemble members can share one frozen
    backbone: each member is then only its own trainable part (an adapter and its head) on that
    backbone, so k members cost one backbone's memory, not k. The models it returns carry it as
    their ``shared_backbone`` attribute."""

    def add(self, name: str, seed: int, copy_of: nn.Module | None = None) -> nn.Module:
        """A new member called ``name`` on the backbone: its trainable part initialised with ``seed``,
        or copied from ``copy_of`` (a member on this backbone, or the model the backbone was made from)."""

    def load(self, name: str, directory: Path) -> nn.Module:
        """A member saved in ``directory`` (by its own ``save_pretrained``), put on this backbone."""

    def probabilities(self, models: Sequence[nn.Module], batch: Batch) -> torch.Tensor | None:
        """(members, batch, [tokens,] classes) in fewer passes than one per member, or None when these
        members cannot be batched (the core then runs them one by one)."""


@dataclass
class MemberSpec:
    """One member for ``fit``: which training rows (with repeats, for bootstraps), loss weights, seed."""

    name: str
    seed: int
    indices: Sequence[int] | None = None  # rows of run.data.train; None = all of them
    weights: Sequence[float] | None = None  # one loss weight per row in ``indices`` (or per train row)
    options: dict[str, Any] = field(default_factory=dict)  # overrides of train.* for this member
    stop_after: int | None = None  # train only this many epochs of the member's schedule (e.g. a soup's trunk)
    start_after: int = 0  # skip this many epochs of it: the model was trained through them (a soup's member)
    model: Any = None  # the model to train, from ``fit.new_model``; None: a fresh one seeded with ``seed``


@dataclass
class Member:
    """A trained member: its model, dev metrics and costs."""

    spec: MemberSpec
    model: Any  # nn.Module
    dev_metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


class FitCallback(Protocol):
    """What the combine stage receives as ``fit``: trains members, and gives combiners what they need besides
    (the core's ``fmkit.members.MemberTrainer``)."""

    start: nn.Module  # the model built with the run's seed: what members that start alike copy
    shared_backbone: SharedBackbone | None  # the backbone members are parts of, when the adapt stage offers one

    def __call__(self, spec: MemberSpec) -> Member:
        """Train the member ``spec`` names (on ``spec.model``, else a fresh model seeded with ``spec.seed``)."""

    def new_model(self, name: str, seed: int, copy_of: nn.Module | None = None) -> nn.Module:
        """The model member ``name`` trains: its own part on the shared backbone, else a whole model; its new
        weights seeded by ``seed``, or copied from ``copy_of`` (``start``, or a trained trunk)."""

    def probabilities(self, predict: Callable[[Batch], torch.Tensor], split: str,
                      rows: Sequence[int] | None = None) -> list:
        """Per-example probabilities of ``predict`` on a split of the run's data (only ``rows``, when given)."""

    def map(self, specs: Sequence[MemberSpec]) -> list[Member]:
        """Train members that do not depend on each other: as Ray tasks under ``--executor ray``."""


@runtime_checkable
class Ensemble(Protocol):
    """What the combine stage returns: members and the rule that combines their predictions."""

    members: list[Member]

    def predict_proba(self, batch: Batch) -> torch.Tensor:
        """Class probabilities: (batch, tokens, classes) for ``ner``, (batch, classes) otherwise."""

    def state(self) -> dict[str, Any]:
        """JSON-serialisable combiner state (member weights, ...) saved beside the members."""

    # Optional: ``save(directory)`` writes what JSON cannot hold (a fitted meta-learner, a soup's
    # averaged model) into the run's ``model/`` folder; ``fmkit_combine_load`` gets that folder back.
    # ``attackable()`` returns the combination as one differentiable model (``.logits`` whose softmax
    # is ``predict_proba``), or None: robust evaluation then attacks the members one by one. When that
    # model holds several members' activations in one backward, its ``attack_slices = k`` has each
    # batch attacked in k slices, so the attack needs one member's memory.
    # For use without fmkit (the run's README.md, ``fmkit export``): ``standalone``, the folder of ``model/``
    # where ``save`` wrote the combination as one plain task model (a soup), or ``combine_code()``: Python
    # that sets ``combined``, the combination's probabilities, from ``probs`` (one torch tensor per member,
    # in ensemble.json's order, (tokens, classes) or (classes,)), ``state`` (what ``state()`` saved) and
    # ``model_dir`` (the run's ``model/`` folder).


EVENTS = ("train_begin", "step", "epoch_end", "train_end", "assess_end")
"""The names an ``Event`` may have, in the order a member's training and a run emit them."""


@dataclass(frozen=True)
class Event:
    """What happened in a run, for ``fmkit_event`` listeners (trackers, callbacks, early-stopping rules).

    ``name`` is one of ``EVENTS``: ``train_begin`` and ``train_end`` around each member's training, ``step``
    after each optimizer step (``loss``, ``lr``), ``epoch_end`` once dev is scored (``loss``, the epoch's last
    step's, and ``dev/<metric>``), and ``assess_end`` once the run is evaluated (``dev/<metric>``,
    ``test/<metric>``, ``robust/<attack>/<split>/<metric>``, ``seconds``: the combination's, as in
    metrics.json). ``train_end`` carries ``best_epoch``, ``epochs_run`` and the best epoch's ``dev/<metric>``;
    ``train_begin`` nothing. ``member`` is the ensemble member's name (None for a single model, and at
    ``assess_end``); ``epoch`` counts from 1 (at ``train_begin`` the first epoch to run, at ``train_end`` the
    last one run; 0 for a model with nothing to train) and ``step`` is the global optimizer step of the
    member's schedule (both None at ``assess_end``). ``values`` holds numbers only."""

    name: str
    member: str | None
    epoch: int | None
    step: int | None
    values: dict[str, float] = field(default_factory=dict)


class StopTraining(Exception):
    """Raised by an ``fmkit_event`` listener at ``step`` or ``epoch_end`` to end the member's training there,
    as patience does: the epoch is scored on dev and the best epoch's weights are kept."""


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in ``values``, nested mappings flattened to ``outer/inner`` keys (what an Event carries)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class Run:
    """The context every hook receives, and what travels between stages (and to Ray workers).

    ``config`` is the resolved config, ``task`` what is learned, ``directory`` where the run is being
    written (None when a saved run is loaded for eval/predict). The core fills in the rest as the run
    goes: ``foundation`` after the pretrain stage, ``data`` (read-only) after the data stage.
    ``plugin_state`` holds what a plugin computes in one stage for a later one, under its own name
    (e.g. a teacher's soft targets): never keep such values on the plugin instance, because a Ray
    worker rebuilds the run from this object, not from the driver's plugins. ``hook`` calls any stage
    of this run's plugins through pluggy (``run.hook.fmkit_adapt_merge(run=run, model=m)``), as
    pytest plugins use ``config.hook``.
    """

    def __init__(self, config: RunConfig, task: Task, data: TaskData | None, directory: Path | None, *,
                 foundation: Foundation | None = None, hook: Any = None,
                 plugin_state: dict[str, Any] | None = None):
        self.config = config
        self.task = task
        self.data = data
        self.directory = directory
        self.foundation = foundation
        self.hook = hook
        self.plugin_state: dict[str, Any] = plugin_state if plugin_state is not None else {}
        self._log_lines: list[str] = []
        self._start = time.time()
        self.notes: list[str] = []

    @property
    def seed(self) -> int:
        return self.config.seed

    def emit(self, name: str, values: Mapping[str, Any] | None = None, *, member: str | None = None,
             epoch: int | None = None, step: int | None = None) -> None:
        """Tell this run's ``fmkit_event`` listeners that ``name`` happened, with the numbers of ``values``
        (``{"dev": {"f1": 0.9}}`` arrives as ``dev/f1``). Costs next to nothing when none listens. A listener's
        StopTraining passes through to the caller (the training loop)."""
        if self.hook is None or not self.hook.fmkit_event.get_hookimpls():
            return
        self.hook.fmkit_event(run=self, event=Event(name, member, epoch, step, numbers(values or {})))

    def log(self, event: str, **fields: Any) -> None:
        """Append an event to the run's log.jsonl (written with the run directory)."""
        record = {"time": round(time.time() - self._start, 3), "event": event, **fields}
        self._log_lines.append(json.dumps(record, default=str))

    def say(self, message: str) -> None:
        """A line for the user now, kept for the report as well."""
        from fmkit.console import info

        self.notes.append(message)
        info(message)

    @property
    def log_text(self) -> str:
        return "".join(line + "\n" for line in self._log_lines)

    def restore_log(self, text: str) -> None:
        """Continue the log of an interrupted run (``fmkit run --resume``) instead of this one's."""
        self._log_lines = text.splitlines()
