"""Checkpoints that let an interrupted run continue where it stopped (``fmkit run --resume runs/NAME``).

A run is built in ``RUNS_DIR/.NAME.partial/`` (see ``fmkit.rundir``); its checkpoints live there too::

    checkpoints/run.json               the run's config: what ``--resume`` rebuilds the run from
    checkpoints/MEMBER/latest.json     names the last complete checkpoint of a member in training
    checkpoints/MEMBER/step-N/         weights.safetensors (trainable parameters and buffers),
                                       best.safetensors (the best epoch's), trainer.pt (optimizer,
                                       scheduler, RNG states), position.json, log.jsonl (the run's so far)
    checkpoints/MEMBER/done/           a trained member: weights.safetensors, member.json, log.jsonl

A checkpoint is written into a new folder first; ``latest.json`` is then replaced atomically to name it,
and only after that is the previous one deleted, so a crash at any moment leaves a complete checkpoint.
A run that fails after its first checkpoint keeps its partial folder; a completed run drops the
checkpoints. Weights are safetensors; ``trainer.pt`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmkit import rundir
from fmkit.errors import FmkitError, first_line

FOLDER = "checkpoints"
CONFIG_FILE = "run.json"
LOG_FILE = "log.jsonl"
DONE = "done"


@dataclass
class Position:
    """Where a member's training stands: ``step`` batches of ``epoch`` are done (0: not started)."""

    epoch: int = 1
    step: int = 0
    steps_done: int = 0  # over all epochs: what ``train.checkpoint_every`` counts
    seen: int = 0
    stepping: float = 0.0
    loss: float = math.nan
    best_score: float = -math.inf
    best_epoch: int = 0
    best_dev: dict[str, Any] = field(default_factory=dict)
    stale: int = 0
    stopped: bool = False  # patience ran out: nothing left to train
    skipped: int = 0  # batches skipped for a non-finite loss (``train.on_nan=skip``)

    def describe(self) -> str:
        return f"epoch {self.epoch} step {self.step}"


def trainable_state(model: Any) -> dict[str, Any]:
    """What a checkpoint must hold to rebuild ``model`` from a fresh build: trainable parameters and
    buffers (e.g. running statistics), not the frozen pretrained weights."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, _ in model.named_parameters()} - trainable
    return {n: t.detach().cpu().contiguous().clone() for n, t in model.state_dict().items() if n not in frozen}


def _write_weights(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def _read_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise FmkitError(f"{path}: corrupt or truncated checkpoint ({first_line(exc)})") from None


def _load_into(model: Any, tensors: dict[str, Any], path: Path) -> None:
    import torch

    with torch.no_grad():
        result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise FmkitError(f"{path}: does not fit this model (e.g. {result.unexpected_keys[0]}); "
                         "was the run's model or plugins changed?")


def unreadable_weights(directory: Path, exc: BaseException) -> str:
    """Why a saved model in ``directory`` failed to load, naming the damaged safetensors file if one is."""
    from safetensors import safe_open

    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as damaged:  # safetensors' own error type
            return f"{path}: corrupt or truncated ({first_line(damaged)})"
    return f"{directory}: cannot load the saved model ({type(exc).__name__}: {first_line(exc)})"


def _sync(directory: Path) -> None:
    """Flush a folder's files to disk before a pointer names it."""
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MemberCheckpoints:
    """The checkpoints of one member: mid-training ones while it trains, ``done/`` once it is trained."""

    def __init__(self, directory: Path, writer: bool = True, log: Any = None):
        self.directory = directory
        self.writer = writer  # only the main process writes (``accelerate launch``)
        self.log = log  # a callable giving the run's log text to keep with each checkpoint, or None

    # -- mid-training ------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        pointer = self.directory / "latest.json"
        if not pointer.is_file():
            return None
        try:
            path = self.directory / json.loads(pointer.read_text(encoding="utf-8"))["path"]
        except (ValueError, KeyError, TypeError):
            raise FmkitError(f"{pointer}: corrupt checkpoint pointer") from None
        if not path.is_dir():
            raise FmkitError(f"{pointer}: names {path.name}, which is missing")
        return path

    def describe(self) -> str:
        """The last good checkpoint, for messages."""
        path = self.latest()
        if path is None:
            return "none"
        position = json.loads((path / "position.json").read_text(encoding="utf-8"))
        return f"{Position(**position).describe()} in {path}"

    def save(self, model: Any, optimizer: Any, scheduler: Any, position: Position, best: dict | None,
             rng: list[dict[str, Any]]) -> None:
        """Write a checkpoint of the state after ``position``; the previous one stays until it is complete.
        ``rng`` holds the RNG states of every process (gathered by the caller)."""
        if not self.writer:
            return
        import torch

        previous = self.latest()
        target = self.directory / f"step-{position.steps_done:07d}"
        if previous is not None and previous.name == target.name:
            target = target.with_name(target.name + "-end")  # the same step, now after its epoch's dev score
        try:
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            _write_weights(target / "weights.safetensors", trainable_state(model))
            if best is not None:
                _write_weights(target / "best.safetensors", {n: t.detach().cpu().contiguous() for n, t in best.items()})
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                       target / "trainer.pt")
            (target / "position.json").write_text(json.dumps(asdict(position)), encoding="utf-8")
            if self.log is not None:
                (target / LOG_FILE).write_text(self.log(), encoding="utf-8")
            _sync(target)
            rundir.write_json(self.directory / "latest.json", {"path": target.name})
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            kept = f"the previous checkpoint ({previous}) is intact" if previous else "no earlier checkpoint"
            raise FmkitError(f"cannot write a checkpoint in {self.directory}: {exc.strerror or exc}; {kept}") from None
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)

    def load(self, model: Any, optimizer: Any, scheduler: Any,
             process: int) -> tuple[Position, dict | None, dict] | None:
        """Restore the last checkpoint into ``model``, ``optimizer`` and ``scheduler``; its position,
        best-epoch weights and the RNG states of process number ``process`` (for ``set_rng_state``),
        or None without one."""
        import torch

        path = self.latest()
        if path is None:
            return None
        _load_into(model, _read_weights(path / "weights.safetensors"), path / "weights.safetensors")
        best = _read_weights(path / "best.safetensors") if (path / "best.safetensors").is_file() else None
        try:
            trainer = torch.load(path / "trainer.pt", weights_only=True)
            position = Position(**json.loads((path / "position.json").read_text(encoding="utf-8")))
            optimizer.load_state_dict(trainer["optimizer"])
            scheduler.load_state_dict(trainer["scheduler"])
        except FileNotFoundError as exc:
            raise FmkitError(f"{path}: incomplete checkpoint ({Path(exc.filename).name} missing)") from None
        except Exception as exc:  # truncated pickle, foreign file, mismatching optimizer groups
            raise FmkitError(f"{path}: corrupt or truncated checkpoint ({first_line(exc)})") from None
        states = trainer["rng"]
        return position, best, states[process] if process < len(states) else states[0]

    # -- trained members -----------------------------------------------------------------------------
    def done(self) -> bool:
        return (self.directory / DONE / "member.json").is_file()

    def save_done(self, weights: dict[str, Any], record: dict[str, Any]) -> None:
        """Record a trained member (its weights and what its log entry says), then drop its mid-training
        checkpoints: a resumed run restores it instead of training it again."""
        if not self.writer:
            return
        building = self.directory / f".{DONE}.tmp"
        try:
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            _write_weights(building / "weights.safetensors", weights)
            (building / "member.json").write_text(json.dumps(record, default=str), encoding="utf-8")
            if self.log is not None:
                (building / LOG_FILE).write_text(self.log(), encoding="utf-8")
            _sync(building)
            os.replace(building, self.directory / DONE)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            raise FmkitError(f"cannot record the trained member in {self.directory}: {exc.strerror or exc}") from None
        for path in self.directory.glob("step-*"):
            shutil.rmtree(path, ignore_errors=True)
        (self.directory / "latest.json").unlink(missing_ok=True)

    def load_done(self, model: Any) -> dict[str, Any]:
        """Put the trained member's weights into ``model`` (freshly built and adapted); its record."""
        path = self.directory / DONE
        _load_into(model, _read_weights(path / "weights.safetensors"), path / "weights.safetensors")
        try:
            return json.loads((path / "member.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise FmkitError(f"{path / 'member.json'}: corrupt ({exc})") from None


class RunCheckpoints:
    """The checkpoints of a run, in ``PARTIAL/checkpoints/``."""

    def __init__(self, partial: Path, writer: bool = True, log: Any = None):
        self.directory = Path(partial) / FOLDER
        self.writer = writer
        self.log = log

    def member(self, name: str) -> MemberCheckpoints:
        return MemberCheckpoints(self.directory / name, self.writer, self.log)

    def exists(self) -> bool:
        """Whether there is something to resume: any member checkpoint."""
        return self.directory.is_dir() and any(
            (m / "latest.json").is_file() or (m / DONE).is_dir() for m in self.directory.iterdir() if m.is_dir())

    def save_config(self, config: Any) -> None:
        if self.writer:
            rundir.write_json(self.directory / CONFIG_FILE, config.model_dump(mode="json"))

    def log_text(self) -> str:
        """The run's log as the newest checkpoint kept it (each one holds the log up to its moment)."""
        folders = self.directory.iterdir() if self.directory.is_dir() else []
        members = [self.member(m.name) for m in folders if m.is_dir()]
        logs = [p / LOG_FILE for m in members for p in (m.latest(), m.directory / DONE) if p is not None]
        logs = [log for log in logs if log.is_file()]
        return max(logs, key=lambda log: log.stat().st_mtime_ns).read_text(encoding="utf-8") if logs else ""

    def remove(self) -> None:
        if self.writer:
            shutil.rmtree(self.directory, ignore_errors=True)


RESUME_SETTINGS = {"train.on_nan", "train.checkpoint_every", "train.progress", "executor", "ray_address"}
"""What ``--resume`` may change: nothing that alters the results."""


def resumable_config(run_dir: Path, settings: dict[str, Any]) -> Any:
    """The config of the interrupted run ``run_dir`` (``RUNS_DIR/NAME``), to run again with
    ``resume=True``, with ``settings`` (``{"train.on_nan": "skip"}``; keys of RESUME_SETTINGS) changed."""
    from pydantic import ValidationError

    from fmkit.config import RunConfig, describe_validation_error, merge

    unknown = sorted(set(settings) - RESUME_SETTINGS)
    if unknown:
        raise FmkitError(f"--resume continues a run with its own options; only {', '.join(sorted(RESUME_SETTINGS))} "
                         f"may change, not {unknown[0]}")
    run_dir = Path(run_dir)
    partial = rundir.partial_path(run_dir)
    saved = partial / FOLDER / CONFIG_FILE
    if not saved.is_file() or not RunCheckpoints(partial).exists():
        done = " (it is complete)" if (run_dir / "config.json").is_file() else ""
        raise FmkitError(f"--resume {run_dir}: no interrupted run with a checkpoint there{done}")
    try:
        values = json.loads(saved.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FmkitError(f"{saved}: corrupt ({exc})") from None
    for key, value in settings.items():
        merge(values, key.split("."), value)
    values.update(runs_dir=str(run_dir.parent), name=run_dir.name)
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise FmkitError(f"{saved}: {describe_validation_error(exc, model=RunConfig)}") from None


def open_partial(target: Path, config: Any, resume: bool, writer: bool) -> Path:
    """The folder the run is built in: a new one (its config saved for ``--resume``), or with
    ``resume`` the interrupted run's. A new run never deletes a resumable one without ``--overwrite``."""
    partial = rundir.partial_path(target)
    if not resume and not config.overwrite and RunCheckpoints(partial).exists():
        raise FmkitError(f"an interrupted run {target.name!r} is kept in {partial}: continue it with "
                         f"`fmkit run --resume {target}`, or pass --overwrite to start afresh")
    if writer:
        partial = rundir.start(target, reuse=resume)
        if not resume:
            RunCheckpoints(partial).save_config(config)
    return partial


def abandon(partial: Path, target: Path, error: BaseException) -> None:
    """After a failure: keep the partial folder when it holds a checkpoint and tell how to continue
    (within the one-line message of a user error), else delete it."""
    if not RunCheckpoints(partial).exists():
        shutil.rmtree(partial, ignore_errors=True)
        return
    hint = f"the run can continue: fmkit run --resume {target}"
    if isinstance(error, FmkitError):
        raise FmkitError(f"{error} ({hint})") from None
    from fmkit.console import info

    info(f"stopped; {hint}")
