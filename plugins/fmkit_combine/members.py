"""What the combine plugins share: their options, the plugin shape, training their members one after
another (models from the core's ``fit.new_model``: adapters on one shared backbone when the adapt stage
offers it, whole models otherwise), and the label-set check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import FitCallback, FmkitError, Member, MemberSpec, Run, TrainConfig, count_parameters, hookimpl


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

    @hookimpl
    def fmkit_combine(self, run: Run, fit: FitCallback) -> Any:
        return self.combine(run, fit)

    def combine(self, run: Run, fit: FitCallback) -> Any:
        """Default: members from ``specs``, combined by a uniform vote."""
        from fmkit_combine.vote import Vote

        members = Members(run, fit, self).train(self.specs(run), self.note)
        return Vote(members, vote=getattr(self.options, "vote", "soft"))

    def note(self, spec: MemberSpec) -> str:
        """More about a member for its progress line."""
        return ""

    @hookimpl
    def fmkit_combine_load(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        check_labels(members, run.task.labels)
        return self.restore(run, members, state, directory)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        from fmkit_combine.vote import Vote

        return Vote(members, state["weights"], state["vote"], {k: v for k, v in state.items() if k not in ("weights", "vote")})


class Members:
    """Trains a combine plugin's members one after another, each announced by a progress line. Members
    that start alike (``plugin.same_start``: soups) copy one start, the run-seeded model or a trained
    trunk (``fork_from``); the others are initialised by their own seeds."""

    def __init__(self, run: Run, fit: FitCallback, plugin: Combine):
        self.run, self.fit, self.plugin = run, fit, plugin
        self.common_start: Any = None  # what same-start members copy; None: the run-seeded model

    def train(self, specs: Sequence[MemberSpec], note: Callable[[MemberSpec], str] = lambda spec: "") -> list[Member]:
        self.announce(len(specs))
        if self.run.config.executor == "ray" and self.fit.shared_backbone is None and not self.plugin.same_start:
            members = self.fit.map(specs)  # whole models from their own seeds: Ray tasks (fmkit.members)
            check_labels(members, self.run.task.labels)
            return members
        return [self.train_one(spec, i, len(specs), note(spec)) for i, spec in enumerate(specs)]

    def train_one(self, spec: MemberSpec, i: int, count: int, note: str = "") -> Member:
        """Train member ``i`` of ``count``; the progress line names it."""
        self.run.say(f"{self.plugin.name}: member {i + 1}/{count} ({spec.name}, seed {spec.seed}{note})")
        return self.fit_one(spec)

    def fit_one(self, spec: MemberSpec) -> Member:
        copy_of = (self.common_start if self.common_start is not None else self.fit.start) if self.plugin.same_start else None
        spec.model = self.fit.new_model(spec.name, spec.seed, copy_of)
        member = self.fit(spec)
        check_labels([member], self.run.task.labels)
        return member

    def fork_from(self, trunk: Member) -> None:
        """Same-start members trained after this start from ``trunk``'s trained weights."""
        self.common_start = trunk.model

    def announce(self, count: int) -> None:
        """Say how the members are held: on one shared backbone, or as whole models (and what that costs)."""
        if self.fit.shared_backbone is not None:
            self.run.say(f"{self.plugin.name}: {count} members as adapters on one shared frozen backbone")
            self.run.log("ensemble", plugin=self.plugin.name, members=count, shared_backbone=True)
            return
        start = self.fit.start
        _, total = count_parameters(start)
        size = sum(p.numel() * p.element_size() for p in start.parameters())
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
