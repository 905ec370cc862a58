"""Member training: the ``fit(spec) -> Member`` callback the combine stage receives, where members'
models come from (one shared backbone when the adapt stage offers it), and how independent members
train: one after another in this process, or as Ray tasks with ``--executor ray`` (a local Ray, or the
cluster at ``--ray-address`` / ``RAY_ADDRESS``).

A Ray task gets the run's config, task, data (as the data stage left it), foundation and plugin state,
runs the fuse and harden stages again (not pretrain or data: the foundation's files must be readable
there at the same path), trains the member with the seed the sequential executor would use, and sends
its trained weights back. The driver records the member as done (so ``--resume`` keeps it) and
restores it into a model of its own, so the results are those of the sequential executor. Members
given a prepared ``spec.model`` (on a shared backbone, or copied from a trunk) train in the driver.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Sequence

from fmkit.assess import Scorer
from fmkit.checkpoint import MemberCheckpoints, RunCheckpoints, trainable_state
from fmkit.config import RunConfig, TrainConfig, describe_validation_error
from fmkit.data.batching import IndexedFeatures
from fmkit.errors import FmkitError
from fmkit.evaluate import softmax_predictor
from fmkit.model import count_parameters, start_at_label_prior
from fmkit.types import Foundation, Member, MemberSpec, ModelBuilder, Run, SharedBackbone, Task

INSTALL_RAY = "pip install 'fmkit[ray]'"


def member_settings(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The run's ``train.*`` settings with a member's own overrides, validated."""
    from pydantic import ValidationError

    try:
        return TrainConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise FmkitError(describe_validation_error(exc, prefix="train", model=TrainConfig)) from None


class MemberTrainer:
    """The ``fit(spec) -> Member`` callback handed to the combine stage, with what combiners need
    besides training: models for their members (``new_model``), probabilities of any predictor on a
    split, and independent members trained together (``map``)."""

    def __init__(self, run: Run, scorer: Scorer, builder: ModelBuilder, hardeners: list,
                 checkpoints: RunCheckpoints | None = None):
        self.run, self.scorer, self.builder, self.hardeners, self.checkpoints = run, scorer, builder, hardeners, checkpoints
        self.train_features = scorer.encode("train", run.data.train)
        self.by_example: dict[int, list[int]] = {}
        for position, f in enumerate(self.train_features):
            self.by_example.setdefault(f.example, []).append(position)
        self._start: Any = None  # the run-seeded model members are built like (see new_model)
        self._start_taken = False
        self._shared: SharedBackbone | None = None

    def build(self, seed: int) -> Any:
        """A freshly built task model, prepared by the adapt stage; ``seed`` fixes its new weights."""
        from accelerate.utils import set_seed

        set_seed(seed)
        model = self.builder.build()
        start_at_label_prior(model, self.run.task, self.run.data.train)
        return self.run.hook.fmkit_adapt(run=self.run, model=model)

    @property
    def start(self) -> Any:
        """The model built with the run's seed: the common start of members that begin alike, and, when
        the adapt stage offers one, the holder of the backbone the members share."""
        if self._start is None:
            self._start = self.build(self.run.seed)
            self._shared = self.run.hook.fmkit_adapt_share(run=self.run, model=self._start)
        return self._start

    @property
    def shared_backbone(self) -> SharedBackbone | None:
        """The backbone members' models are parts of (they then train in this process), or None."""
        return self._shared if self.start is not None else None

    def new_model(self, name: str, seed: int, copy_of: Any = None) -> Any:
        """The model member ``name`` trains: its own part on the shared backbone when the adapt stage
        offers one, else a whole model; its new weights seeded by ``seed``, or copied from ``copy_of``
        (``start``, or a trained trunk). Whole models: the first one asked for without ``copy_of`` is
        ``start`` itself."""
        start, shared = self.start, self.shared_backbone
        if shared is not None:
            return shared.add(name, seed, copy_of)
        if copy_of is not None:
            return copy.deepcopy(copy_of)
        if not self._start_taken:
            self._start_taken = True
            return start
        return self.build(seed)

    def probabilities(self, predict: Any, split: str, rows: Sequence[int] | None = None) -> list:
        """Per-example probabilities of ``predict`` (batch -> probabilities) on a split of the run's data.
        Training rows, which combiners score between members (boosting's errors, stacking's out-of-fold
        predictions), go in training-size batches: in prediction-size batches, scoring the whole
        training split set the run's memory peak (measured in docs/ensembles.md)."""
        train = self.run.config.train
        return self.scorer.probabilities(predict, getattr(self.run.data, split), split, rows,
                                         train.batch_size if split == "train" else None)

    def __call__(self, spec: MemberSpec) -> Member:
        from fmkit.train import Trainer

        run = self.run
        settings = member_settings(run.config.train, spec.options)
        started = time.perf_counter()
        model = self.build(spec.seed) if spec.model is None else spec.model
        saved = self.checkpoints.member(spec.name) if self.checkpoints is not None else None
        if saved is not None and saved.done():  # trained before an interruption
            return self.restore(spec, model, saved)
        examples = range(len(run.data.train)) if spec.indices is None else spec.indices
        rows, weights = [], []
        for position, example in enumerate(examples):
            for row in self.by_example[example]:
                rows.append(row)
                if spec.weights is not None:
                    weights.append(float(spec.weights[position]))
        report = Trainer(
            run, model, IndexedFeatures(self.train_features, rows),
            lambda m: self.scorer.evaluate(softmax_predictor(m), run.data.dev, "dev")[0],
            settings=settings, seed=spec.seed, pad_id=self.scorer.pad_id,
            label=f"{spec.name}: " if spec.name != "model" else "",
            weights=weights or None, hardeners=self.hardeners, checkpoints=saved, stop_after=spec.stop_after,
            start_after=spec.start_after,
        ).fit()
        trainable, total = count_parameters(model)
        member = Member(spec, model, {k: v for k, v in report.best_dev.items() if k != "report"},
                        time.perf_counter() - started, trainable, total)
        record = dict(name=spec.name, best_epoch=report.best_epoch, epochs_run=report.epochs_run,
                      seconds=round(member.train_seconds, 2),
                      sentences_per_second=round(report.sentences_per_second, 2),
                      trainable_params=trainable, total_params=total, dev=member.dev_metrics)
        run.log("member", **record)
        if saved is not None:
            saved.save_done(trainable_state(model), record)
        return member

    def restore(self, spec: MemberSpec, model: Any, saved: MemberCheckpoints) -> Member:
        """A member trained before an interruption (or by a Ray worker): its weights, put into ``model``."""
        from fmkit.train import accelerator_for

        record = saved.load_done(model)
        model.to(accelerator_for(self.run.config.train.precision).device).eval()
        self.run.log("member", **record, restored=True)
        return Member(spec, model, record["dev"], record["seconds"], record["trainable_params"], record["total_params"])

    def map(self, specs: Sequence[MemberSpec]) -> list[Member]:
        """Train independent members: one after another, or as Ray tasks with ``--executor ray``
        (members without a ``spec.model`` that are not done yet); in ``specs``' order."""
        specs = list(specs)
        if self.run.config.executor == "ray" and self.checkpoints is not None:
            remote = [s for s in specs if s.model is None and not self.checkpoints.member(s.name).done()]
            if remote:
                train_on_ray(self, remote)
        return [self(spec) for spec in specs]  # members trained elsewhere (or before an interruption) are restored


def check_executor(config: Any) -> None:
    """Fail before any weights load when the chosen executor cannot run here."""
    if config.executor == "ray" and find_spec("ray") is None:
        raise FmkitError(f"--executor ray needs Ray, which is not installed: {INSTALL_RAY}")


@dataclass
class MemberContext:
    """What a Ray task needs to rebuild this run and train a member of it."""

    config: dict[str, Any]
    task: Task
    data: Any
    foundation: Foundation
    plugin_state: dict[str, Any]
    directory: Path
    skip_plugins: list[str]  # the combine plugin: members train without it


def train_on_ray(trainer: MemberTrainer, specs: list[MemberSpec]) -> None:
    """Train ``specs`` as parallel Ray tasks; record each trained member in the run's checkpoints."""
    import ray

    from fmkit.train import processes

    if processes().num_processes > 1:
        raise FmkitError("--executor ray trains members as Ray tasks: start the run without accelerate launch")
    run = trainer.run
    remote = ray_remote(train_member, run.config.ray_address)
    context = ray.put(MemberContext(
        run.config.model_dump(mode="json"), run.task, run.data, run.foundation, run.plugin_state, run.directory,
        [impl.plugin_name for impl in run.hook.fmkit_combine.get_hookimpls() if impl.plugin_name in run.config.plugins]))
    run.say(f"training {len(specs)} members as Ray tasks")
    pending = {spec.name: remote.remote(context, replace(spec, model=None)) for spec in specs}
    for name, future in pending.items():
        try:
            weights, record, log = ray.get(future)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, FmkitError):
                raise FmkitError(f"member {name}: {exc.cause}") from None
            raise
        saved = trainer.checkpoints.member(name)
        if not saved.done():  # a worker on this machine already recorded it
            saved.save_done(weights, record)
        for line in log.splitlines():  # the worker's events join the run's log
            event = json.loads(line)
            kind = event.pop("event")
            event.pop("time", None)
            if kind != "member":  # the driver logs the member when it restores it
                run.log(kind, **event)


def ray_remote(function: Any, address: str | None) -> Any:
    """``function`` as a Ray task on a local Ray, or the cluster at ``address`` (else ``RAY_ADDRESS``): one
    CPU, and one GPU when the cluster has them. Ensemble members and ``fmkit sweep``'s cells run so."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return ray.remote(num_cpus=1, num_gpus=gpus)(function)


def train_member(context: MemberContext, spec: MemberSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
    """In a Ray worker: rebuild the run as the driver had it after its data stage, train one member;
    its trained weights, its log record and the worker's log."""
    from fmkit.registry import select
    from fmkit.stages import hardeners

    values = dict(context.config)
    values["plugins"] = [p for p in values["plugins"] if p not in context.skip_plugins]
    values["plugin_options"] = {k: v for k, v in values["plugin_options"].items() if k not in context.skip_plugins}
    config = RunConfig.model_validate(values)
    shared = context.directory.is_dir()  # mid-training checkpoints only where the driver can read them
    run = Run(config, context.task, context.data, context.directory if shared else None,
              foundation=context.foundation, hook=select(config).manager.hook, plugin_state=context.plugin_state)
    builder = run.hook.fmkit_fuse(run=run, foundation=run.foundation)
    trainer = MemberTrainer(run, Scorer(run), builder, hardeners(run), RunCheckpoints(context.directory) if shared else None)
    member = trainer(spec)
    records = [json.loads(line) for line in run.log_text.splitlines()]
    record = next(r for r in reversed(records) if r["event"] == "member")
    record = {k: v for k, v in record.items() if k not in ("event", "time")}
    return trainable_state(member.model), record, run.log_text
