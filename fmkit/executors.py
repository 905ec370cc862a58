"""How ``fit.map`` trains independent ensemble members: one after another in this process, or as Ray
tasks with ``--executor ray`` (a local Ray, or the cluster at ``--ray-address`` / ``RAY_ADDRESS``).

A Ray task gets the run's config, data and foundation, runs the fuse and harden stages again (not
pretrain: the foundation's files must be readable there at the same path), trains the member with the
seed the sequential executor would use, and sends its trained weights back. The driver records the
member as done (so ``--resume`` keeps it) and restores it into a model of its own, so the results are
those of the sequential executor. Members given a prepared ``spec.model`` train in the driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fmkit.errors import FmkitError
from fmkit.types import Foundation, Member, MemberSpec, Task

INSTALL_RAY = "pip install 'fmkit[ray]'"


def check_executor(config: Any) -> None:
    """Fail before any weights load when the chosen executor cannot run here."""
    if config.executor == "ray" and find_spec("ray") is None:
        raise FmkitError(f"--executor ray needs Ray, which is not installed: {INSTALL_RAY}")


def fit_all(fit: Any, specs: list[MemberSpec]) -> list[Member]:
    """``fit.map``: the trained members of ``specs``, in order."""
    if fit.prepared.run.config.executor == "ray" and fit.checkpoints is not None:
        remote = [s for s in specs if s.model is None and not fit.checkpoints.member(s.name).done()]
        if remote:
            _train_on_ray(fit, remote)
    return [fit(spec) for spec in specs]  # members trained elsewhere (or before an interruption) are restored


@dataclass
class MemberContext:
    """What a Ray task needs to train a member of this run."""

    config: dict[str, Any]
    task: Task
    data: Any
    foundation: Foundation
    directory: Path
    skip_plugins: list[str]  # the combine plugin: members train without it


def _train_on_ray(fit: Any, specs: list[MemberSpec]) -> None:
    """Train ``specs`` as parallel Ray tasks; record each trained member in the run's checkpoints."""
    import ray

    from fmkit.train import processes

    if processes().num_processes > 1:
        raise FmkitError("--executor ray trains members as Ray tasks: start the run without accelerate launch")
    run, prepared = fit.prepared.run, fit.prepared
    if not ray.is_initialized():
        ray.init(address=run.config.ray_address, include_dashboard=False, configure_logging=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    context = ray.put(MemberContext(
        run.config.model_dump(mode="json"), run.task, run.data, prepared.foundation, run.directory,
        [p.name for p in prepared.selection.by_stage("combine")]))
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(train_member)
    run.say(f"training {len(specs)} members as Ray tasks")
    pending = {spec.name: remote.remote(context, replace(spec, model=None)) for spec in specs}
    for name, future in pending.items():
        try:
            weights, record, log = ray.get(future)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, FmkitError):
                raise FmkitError(f"member {name}: {exc.cause}") from None
            raise
        saved = fit.checkpoints.member(name)
        if not saved.done():  # a worker on this machine already recorded it
            saved.save_done(weights, record)
        for line in log.splitlines():  # the worker's events join the run's log
            event = json.loads(line)
            kind = event.pop("event")
            event.pop("time", None)
            if kind != "member":  # the driver logs the member when it restores it
                run.log(kind, **event)


def train_member(context: MemberContext, spec: MemberSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
    """In a Ray worker: train one member; its trained weights, its log record and the worker's log."""
    from fmkit.checkpoint import RunCheckpoints, trainable_state
    from fmkit.config import RunConfig
    from fmkit.pipeline import Fit, prepare
    from fmkit.plugins import select
    from fmkit.types import Run

    values = dict(context.config)
    values["plugins"] = [p for p in values["plugins"] if p not in context.skip_plugins]
    values["plugin_options"] = {k: v for k, v in values["plugin_options"].items() if k not in context.skip_plugins}
    config = RunConfig.model_validate(values)
    shared = context.directory.is_dir()  # mid-training checkpoints only where the driver can read them
    run = Run(config, context.task, context.data, context.directory if shared else None)
    prepared, hardeners = prepare(run, select(config), context.foundation)
    member = Fit(prepared, hardeners, RunCheckpoints(context.directory) if shared else None)(spec)
    records = [json.loads(line) for line in run.log_text.splitlines()]
    record = next(r for r in reversed(records) if r["event"] == "member")
    record = {k: v for k, v in record.items() if k not in ("event", "time")}
    return trainable_state(member.model), record, run.log_text
