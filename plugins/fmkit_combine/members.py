"""What the combine plugins share: their options, the plugin shape, training their members (models from
the core's ``fit.new_model``: adapters on one shared backbone when the adapt stage offers it, whole models
otherwise), the trunk they fork from, and the label-set check.

Members continue one trunk (docs/ensembles.md): the first ``trunk`` share of the run's schedule is trained
once, on all training rows and with the harden stage, and every member forks from it to run the rest of
that schedule with its own diversity (bootstrap rows, reweighted rows, its seed). The members then start
where a single run would be at that point, and inherit its robustness, for a fraction of the cost of
training each from scratch (snapshot ensembles, Huang et al. 2017; fast geometric ensembling, Garipov et
al. 2018; children of one parent, Frankle et al. 2020). ``trunk=0`` trains the classic independent
members, each from its own seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import FitCallback, FmkitError, Member, MemberSpec, Run, TrainConfig, count_parameters, hookimpl


class CombineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: int = Field(5, ge=2, description="ensemble members; each one is trained, so the cost grows with it")


def trunk_option(default: float) -> Any:
    """The ``trunk`` option, with this plugin's default."""
    return Field(default, ge=0, lt=1, description="share of train.epochs (rounded down to whole epochs) trained "
                 "once as a trunk, on all training rows and with the harden stage, before the members fork from "
                 "it and each runs the rest of the schedule with its own diversity; 0: classic independent "
                 "members, each trained from its own seed for the whole schedule")


class TrunkOptions(CombineOptions):
    trunk: float = trunk_option(0.5)


class VariedOptions(TrunkOptions):
    options: dict[str, list[Any]] = Field(
        default_factory=dict, description="train.* settings that differ by member, one value per member, "
                                          "e.g. {lr: [1e-3, 5e-4, 3e-4]}; members also differ by seed")


class Combine:
    """The plugin shape every combine plugin shares: check options, train members, combine, reload."""

    stage = "combine"
    same_start = False  # without a trunk, members start from the same weights (soups), not each from its seed

    @property
    def combination(self) -> str:
        """How the members' predictions become one, for the plan."""
        cascade = getattr(self.options, "cascade", None)
        return f"a {getattr(self.options, 'vote', 'soft')} vote" + (
            f", as a cascade: the first member alone where it is {cascade:g} sure" if cascade else "")

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
        """Default: members from ``specs`` (forked from a trunk), combined by a uniform vote."""
        from fmkit_combine.vote import Vote

        trainer = Members(run, fit, self)
        members = trainer.train(self.specs(run), self.note)
        return Vote(members, vote=getattr(self.options, "vote", "soft"), extra=trainer.record(),
                    cascade=getattr(self.options, "cascade", None))

    def note(self, spec: MemberSpec) -> str:
        """More about a member for its progress line and the plan: what it trains on, when that is not all rows."""
        return ""

    @hookimpl
    def fmkit_plan(self, run: Run) -> list[str]:
        """The trunk and each member: from where, which epochs, on which rows, about how many optimizer steps."""
        import math

        train, n = run.config.train, len(run.data.train)
        shared = int(train.epochs * getattr(self.options, "trunk", 0.0))
        steps = math.ceil(n / train.batch_size) * shared
        lines = [f"trunk: epochs 1-{shared} of {train.epochs} on all {n:,} training rows, about {steps:,} optimizer "
                 f"steps, seed {run.seed}, with the harden stage; the members copy it"] if shared else []
        for spec in self.specs(run):
            epochs, batch = spec.options.get("epochs", train.epochs), spec.options.get("batch_size", train.batch_size)
            rows = n if spec.indices is None else len(spec.indices)
            own = math.ceil(rows / batch) * (epochs - shared)
            steps += own
            start = "continues the trunk" if shared else "starts from the run's seed" if self.same_start else \
                f"starts from its own seed {spec.seed}"
            lines.append(f"{spec.name}: {start}, epochs {shared + 1}-{epochs}, about {own:,} optimizer steps"
                         f"{self.note(spec)}")
        single = math.ceil(n / train.batch_size) * train.epochs
        lines.append(f"in all about {steps:,} optimizer steps ({steps / single:.1f}x one member trained alone); "
                     f"combined by {self.combination}")
        return lines

    @hookimpl
    def fmkit_combine_load(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        check_labels(members, run.task.labels)
        return self.restore(run, members, state, directory)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        from fmkit_combine.vote import Vote

        extra = {k: v for k, v in state.items() if k not in ("weights", "vote", "cascade")}
        return Vote(members, state["weights"], state["vote"], extra, state.get("cascade"))


class Members:
    """Trains a combine plugin's members, each announced by a progress line: first the trunk (when the
    plugin's ``trunk`` option leaves one), then the members, which copy it; without a trunk, members that
    start alike (``plugin.same_start``: soups) copy the run-seeded model and the others are initialised by
    their own seeds (and may train as Ray tasks)."""

    def __init__(self, run: Run, fit: FitCallback, plugin: Combine):
        self.run, self.fit, self.plugin = run, fit, plugin
        self.trunk: Member | None = None

    def train(self, specs: Sequence[MemberSpec], note: Callable[[MemberSpec], str] = lambda spec: "") -> list[Member]:
        self.announce(len(specs))
        self.grow_trunk(specs)
        independent = self.trunk is None and not self.plugin.same_start and self.fit.shared_backbone is None
        if self.run.config.executor == "ray" and independent:
            members = self.fit.map(specs)  # whole models from their own seeds: Ray tasks (fmkit.members)
            check_labels(members, self.run.task.labels)
            return members
        if self.run.config.executor == "ray":
            self.run.say(f"{self.plugin.name}: members that copy a trunk or share a backbone train in this process; "
                         f"Ray tasks train independent whole models ({self.plugin.name}.trunk=0, no adapter)")
        return [self.train_one(spec, i, len(specs), note(spec)) for i, spec in enumerate(specs)]

    def grow_trunk(self, specs: Sequence[MemberSpec]) -> None:
        """Train the first ``trunk`` share of the run's schedule once, on all rows; each member then runs
        the rest of its own schedule (``start_after``) from a copy of it. No trunk when the share rounds
        down to no whole epoch (or the plugin has no ``trunk`` option)."""
        epochs = self.run.config.train.epochs
        shared = int(epochs * getattr(self.plugin.options, "trunk", 0.0))
        if shared == 0:
            return
        for spec in specs:
            own = spec.options.get("epochs", epochs)
            if own <= shared:
                raise FmkitError(f"{self.plugin.name}.trunk: member {spec.name} trains {own} epoch(s), not more than "
                                 f"the {shared} its trunk runs; lower {self.plugin.name}.trunk or raise the epochs")
            spec.start_after = shared
        self.run.say(f"{self.plugin.name}: trunk, the first {shared} of {epochs} epochs on all training rows, "
                     f"trained once for every member (seed {self.run.seed})")
        self.trunk = self.fit_one(MemberSpec("trunk", self.run.seed, stop_after=shared))

    def train_one(self, spec: MemberSpec, i: int, count: int, note: str = "") -> Member:
        """Train member ``i`` of ``count``; the progress line names it."""
        start = ", from the trunk" if self.trunk is not None else ""
        self.run.say(f"{self.plugin.name}: member {i + 1}/{count} ({spec.name}, seed {spec.seed}{start}{note})")
        return self.fit_one(spec)

    def fit_one(self, spec: MemberSpec) -> Member:
        copy_of = self.trunk.model if self.trunk is not None else self.fit.start if self.plugin.same_start else None
        spec.model = self.fit.new_model(spec.name, spec.seed, copy_of)
        member = self.fit(spec)
        check_labels([member], self.run.task.labels)
        return member

    def record(self) -> dict[str, Any]:
        """What the ensemble's state keeps of the trunk: its epochs, training time and dev scores."""
        if self.trunk is None:
            return {}
        return {"trunk": {"epochs": self.trunk.spec.stop_after, "train_seconds": round(self.trunk.train_seconds, 1),
                          "dev": self.trunk.dev_metrics}}

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
