"""``fmkit run`` end to end: config -> plugins -> data -> pretrain -> data stage -> fuse -> combine(fit
-> adapt -> train[harden]) -> assess -> run directory. Each step is one call into the module that owns
it; this module only orders them and keeps an interrupted run resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fmkit import rundir
from fmkit.artifacts import save
from fmkit.assess import Scorer, assess
from fmkit.checkpoint import RunCheckpoints, abandon, open_partial
from fmkit.config import RunConfig
from fmkit.data import load_task_data
from fmkit.members import MemberTrainer, check_executor
from fmkit.registry import Selection, select, with_train_defaults
from fmkit.stages import hardeners, transform_data
from fmkit.trackers import attach as attach_trackers
from fmkit.types import Run


def execute(config: RunConfig, selection: Selection | None = None, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train, evaluate and save one run; return the run directory and its metrics. ``resume``: continue
    the interrupted run of that name from its checkpoints. Under ``accelerate launch`` every process
    trains; only the main one writes the run directory."""
    from fmkit.train import processes, resolved_precision

    selection = selection or select(config)
    check_executor(config)
    config = with_train_defaults(config, selection)
    task, data = load_task_data(config)
    group = processes()
    name = rundir.run_name(config.name)
    if group.num_processes > 1:  # a timestamp name must be the main process's
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name])[0]
    target = rundir.check_target(config.runs_dir, name, config.overwrite)
    started = time.perf_counter()
    reset_peak_memory()
    partial = open_partial(target, config.model_copy(update={"name": name}), resume, group.is_main_process)
    group.wait_for_everyone()
    run = Run(config, task, data, partial, hook=selection.manager.hook)
    checkpoints = RunCheckpoints(partial, group.is_main_process, lambda: run.log_text)
    tracking = attach_trackers(run, selection.manager, name, group.is_main_process)
    try:
        run.say(f"data: {data.description}")
        if config.train.precision == "auto":
            resolved = resolved_precision("auto")
            run.say(f"precision: {'bf16 autocast' if resolved == 'bf16' else 'fp32'} (train.precision=auto: bf16 "
                    f"{'is' if resolved == 'bf16' else 'is not'} computed in hardware here)")
        run.foundation = run.hook.fmkit_pretrain(run=run)
        run.data = transform_data(run)
        builder = run.hook.fmkit_fuse(run=run, foundation=run.foundation)
        stage_hardeners = hardeners(run)
        if resume:
            run.restore_log(checkpoints.log_text())
        scorer = Scorer(run)
        trainer = MemberTrainer(run, scorer, builder, stage_hardeners, checkpoints)
        ensemble = run.hook.fmkit_combine(run=run, fit=trainer)
        metrics, report, predicted = assess(scorer, ensemble, run.data, stage_hardeners, builder)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        metrics.update(peak_memory(), precision=resolved_precision(config.train.precision))
        run.emit("assess_end", {k: v for k, v in metrics.items() if k != "members"})
        if group.is_main_process:
            save(run, selection, ensemble, metrics, report, target, predicted)
    except BaseException as exc:
        if tracking is not None:
            tracking.close(failed=True)
        if group.is_main_process:
            abandon(partial, target, exc)
        raise
    if group.is_main_process:
        checkpoints.remove()
        rundir.finish(partial, target)
    group.wait_for_everyone()
    return target, metrics


def reset_peak_memory() -> None:
    """Start this run's memory peaks afresh, so that a run after others in one process (a sweep's cells,
    ``fmkit.run`` in a notebook) reports its own: Linux resets the resident peak (VmHWM) on writing 5 to
    /proc/self/clear_refs, torch its GPU peak. Elsewhere the resident peak stays the process's."""
    import sys

    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as control:
            control.write("5")
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """The run's peak resident memory (``peak_memory_mb``) and, on a GPU, the peak memory torch allocated
    there (``peak_gpu_memory_mb``), in MiB, since ``reset_peak_memory``: what a leaderboard compares beside
    time. Linux reads VmHWM; elsewhere the process's peak since it started (``getrusage``)."""
    import re
    import sys

    peaks: dict[str, float] = {}
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
        peaks["peak_memory_mb"] = round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024, 1)
    except (OSError, AttributeError):
        try:
            import resource
        except ImportError:  # not on Windows
            resource = None  # type: ignore[assignment]
        if resource is not None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            peaks["peak_memory_mb"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks
