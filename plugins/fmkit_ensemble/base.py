"""What the combine plugins share: their options, training the members (adapters on one backbone),
the weighted vote that combines them, and the label-set check."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

import fmkit
from fmkit.errors import FmkitError
from fmkit.types import Member, MemberSpec, Run

Fit = Callable[[MemberSpec], Member]  # fmkit.pipeline.Fit: also .model(seed) and .probabilities(...)


class CombineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: int = Field(5, ge=2, description="ensemble members; each one is trained, so the cost grows with it")


class VariedOptions(CombineOptions):
    options: dict[str, list[Any]] = Field(
        default_factory=dict, description="train.* settings that differ by member, one value per member, "
                                          "e.g. {lr: [1e-3, 5e-4, 3e-4]}; members also differ by seed")


class Combine:
    """The plugin shape every combine plugin shares: check options, train members, combine, reload."""

    stage = "combine"
    same_start = False  # members start from the same weights (soups), not each from its own seed
    # Every member costs a training run: 2 epochs each unless train.epochs is set, in batches of 8, which
    # gives such short schedules twice the optimizer steps at the same cost (docs/ensembles.md).
    train_defaults = {"epochs": 2, "batch_size": 8}

    def __init__(self, options: CombineOptions):
        self.options = options

    def check(self, config: Any) -> None:
        from fmkit.config import TrainConfig

        k = self.options.members
        for key, values in getattr(self.options, "options", {}).items():
            if key not in TrainConfig.model_fields:
                raise FmkitError(f"{self.name}.options: {key!r} is not a train.* setting "
                                 f"(one of {', '.join(TrainConfig.model_fields)})")
            if len(values) != k:
                raise FmkitError(f"{self.name}.options.{key} has {len(values)} values for {k} members: give one per "
                                 f"member (or set {self.name}.members={len(values)})")

    def specs(self, run: Run) -> list[MemberSpec]:
        """One spec per member: seeds run.seed + i, and the member's own train.* settings."""
        varied = getattr(self.options, "options", {})
        return [MemberSpec(f"m{i + 1}", run.seed + i, options={k: v[i] for k, v in varied.items()})
                for i in range(self.options.members)]

    @fmkit.hookimpl
    def fmkit_combine(self, run: Run, fit: Fit) -> Any:
        return self.combine(run, fit)

    def combine(self, run: Run, fit: Fit) -> Any:
        """Default: members from ``specs``, combined by a uniform vote."""
        members = Members(run, fit, self).train(self.specs(run), self.note)
        return Vote(members, vote=getattr(self.options, "vote", "soft"))

    def note(self, spec: MemberSpec) -> str:
        """More about a member for its progress line."""
        return ""

    @fmkit.hookimpl
    def fmkit_combine_load(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        from fmkit_ensemble.shared import share_loaded

        check_labels(members, run.task.labels)
        return self.restore(run, share_loaded(members), state, directory)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        return Vote(members, state["weights"], state["vote"], {k: v for k, v in state.items() if k not in ("weights", "vote")})


class Members:
    """Trains a plugin's members one after another. Adapter members are named adapters on one shared
    backbone; full members are separate models (the user is told what that costs in memory)."""

    def __init__(self, run: Run, fit: Fit, plugin: Combine):
        from fmkit_ensemble.shared import Backbone

        self.run, self.fit, self.plugin = run, fit, plugin
        self.start = fit.model(run.seed)  # built and adapted once: the first member, or the common start
        self.backbone = Backbone.of(self.start)

    def train(self, specs: Sequence[MemberSpec], note: Callable[[MemberSpec], str] = lambda spec: "") -> list[Member]:
        self.tell(len(specs))
        if self.run.config.executor == "ray" and self.backbone is None and not self.plugin.same_start:
            members = self.fit.map(specs)  # separate models from their own seeds: Ray tasks (fmkit.executors)
            check_labels(members, self.run.task.labels)
            return members
        return [self.train_one(spec, i, len(specs), note(spec)) for i, spec in enumerate(specs)]

    def train_one(self, spec: MemberSpec, i: int, count: int, note: str = "") -> Member:
        """Train member ``i`` of ``count`` (its model placed by ``model_for``); the progress line names it."""
        self.run.say(f"{self.plugin.name}: member {i + 1}/{count} ({spec.name}, seed {spec.seed}{note})")
        return self.fit_one(spec, self.model_for(spec, i, count))

    def fit_one(self, spec: MemberSpec, model: Any) -> Member:
        spec.model = model
        member = self.fit(spec)
        check_labels([member], self.run.task.labels)
        return member

    def fork_from(self, trunk: Member) -> None:
        """Members trained after this start from ``trunk``'s trained weights (its adapter, or a copy of it)."""
        if self.backbone is not None:
            self.backbone.template = trunk.model.adapter
        else:
            self.start = trunk.model

    def model_for(self, spec: MemberSpec, i: int, count: int) -> Any:
        if self.backbone is not None:
            return self.backbone.add(spec.name, spec.seed, self.plugin.same_start)
        if self.plugin.same_start:
            return self.start if i == count - 1 else copy.deepcopy(self.start)
        return self.start if i == 0 else None  # None: fit builds it with the member's seed

    def tell(self, count: int) -> None:
        from fmkit.model import count_parameters

        if self.backbone is not None:
            self.run.say(f"{self.plugin.name}: {count} members as adapters on one shared frozen backbone")
            self.run.log("ensemble", plugin=self.plugin.name, members=count, shared_backbone=True)
            return
        _, total = count_parameters(self.start)
        size = sum(p.numel() * p.element_size() for p in self.start.parameters())
        self.run.say(f"{self.plugin.name}: {count} members are {count} separate models of {total / 1e6:.1f} M "
                     f"parameters each, ~{count * size / 2**20:,.0f} MiB of weights in memory (an adapter plugin, "
                     f"e.g. --plugins adapter,...,{self.plugin.name}, shares one backbone among them)")
        self.run.log("ensemble", plugin=self.plugin.name, members=count, shared_backbone=False,
                     weights_mib=round(count * size / 2**20, 1))


def check_labels(members: Sequence[Member], labels: list[str]) -> None:
    """Members whose models predict another label set than the run's task cannot be combined."""
    for member in members:
        config = getattr(member.model, "config", None)
        id2label = getattr(config, "id2label", None)
        if not id2label:
            continue
        own = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
        if own != list(labels):
            raise FmkitError(f"member {member.name} predicts labels {','.join(map(str, own))} but the run's task has "
                             f"{','.join(labels)}: members with different label sets cannot be combined")


class Vote:
    """A weighted vote of the members' probabilities: soft (average the probabilities) or hard (each
    member votes for its most likely class, per token for NER; the vote shares are the probabilities)."""

    def __init__(self, members: list[Member], weights: Sequence[float] | None = None,
                 vote: Literal["soft", "hard"] = "soft", extra: dict[str, Any] | None = None):
        self.members = members
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        self.weights = [w / sum(weights) for w in weights]
        self.vote = vote
        self.extra = extra or {}

    def member_probabilities(self, batch: dict) -> Any:
        from fmkit_ensemble.shared import member_probabilities

        return member_probabilities([m.model for m in self.members], batch)

    def predict_proba(self, batch: dict) -> Any:
        import torch

        probs = self.member_probabilities(batch)
        if self.vote == "hard":
            probs = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
        weights = torch.tensor(self.weights, device=probs.device).view(-1, *[1] * (probs.dim() - 1))
        return (probs * weights).sum(0)

    def attackable(self) -> Any:
        """The soft vote as one model for robust evaluation (None for a hard vote: its argmax has no
        gradient, so its members are attacked one by one)."""
        from fmkit_ensemble.shared import SoftVoteModel

        return SoftVoteModel.of([m.model for m in self.members], self.weights) if self.vote == "soft" else None

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights, "vote": self.vote, **self.extra}
