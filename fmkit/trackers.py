"""``train.report_to``: a run's events sent to experiment trackers (TensorBoard, MLflow, Weights & Biases, ...)
through Hugging Face Accelerate's tracker classes. It is an ``fmkit_event`` listener like any other: the
training loop knows nothing of trackers.

Every number an event carries is logged as ``EVENT/KEY`` (``step/loss``, ``epoch_end/dev/f1``,
``assess_end/test/f1``) at the member's global optimizer step. A single model is one tracker run named after
the fmkit run; each ensemble member is a run of its own (``NAME/MEMBER``, open from its ``train_begin`` to its
``train_end``; MLflow keeps one run active at a time), and the combination's final metrics a run ``NAME``.
Files go under the run directory's ``trackers/``: TensorBoard's event files, and MLflow's store
(``trackers/mlflow.db``) unless ``MLFLOW_TRACKING_URI`` (or ``mlflow.set_tracking_uri``) names another.
Only the main process logs. Importing this module stays cheap: the trackers load when a run starts them.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import fmkit
from fmkit.config import flatten_options
from fmkit.errors import FmkitError

INSTALL = "pip install 'fmkit[trackers]'"
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), INSTALL),
    "mlflow": (("mlflow",), INSTALL),
    "wandb": (("wandb",), "pip install wandb"),
    "comet_ml": (("comet_ml",), "pip install comet-ml"),
    "aim": (("aim",), "pip install aim"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "trackio": (("trackio",), "pip install trackio"),
}
"""The trackers Accelerate drives: name -> (the modules it needs, the pip command that installs them)."""
MLFLOW_STORE = ("sqlalchemy", "alembic")  # what MLflow's own store under the run directory (SQLite) needs
PROJECT = "fmkit"  # the MLflow experiment and W&B project of the runs (MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT win)


def check(names: list[str]) -> list[str]:
    """The trackers ``train.report_to`` names, ``all`` expanded to those installed; a one-line FmkitError for
    one that is not installed, before any model loads."""
    if "all" in names:
        found = [name for name in TRACKERS if not missing(name)]
        if not found:
            raise FmkitError(f"train.report_to=all: no experiment tracker is installed: {INSTALL}")
        names = list(dict.fromkeys([n for n in names if n != "all"] + found))
    for name in names:
        absent = missing(name)
        if absent:
            raise FmkitError(f"train.report_to: {name} needs {', '.join(absent)}, which is not installed: "
                             f"{TRACKERS[name][1]}")
    return names


def missing(name: str) -> list[str]:
    """The modules tracker ``name`` needs here that are not installed."""
    modules = TRACKERS[name][0]
    if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        modules += MLFLOW_STORE
    return [m for m in modules if not _installed(m)]


def _installed(module: str) -> bool:
    return find_spec(module) is not None


def attach(run: Any, manager: Any, name: str, main_process: bool) -> Trackers | None:
    """Register the listener of ``run.config.train.report_to`` on the run's plugin manager (on the main process;
    None when no tracker is asked for). ``name`` is the run's name; its files go under ``run.directory``."""
    names = run.config.train.report_to
    if not names or not main_process:
        return None
    listener = Trackers(check(names), Path(run.directory) / "trackers", name, run.config.model_dump(mode="json"))
    manager.register(listener, name="fmkit-trackers")
    return listener


class Trackers:
    """Accelerate's trackers, one set per tracker run (the single model, or each member and the combination)."""

    def __init__(self, names: list[str], directory: Path, run_name: str, config: dict[str, Any]):
        self.names, self.directory, self.run_name = names, directory, run_name
        self.config = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                       for key, value in flatten_options(config).items()}
        self.open: dict[str | None, list[Any]] = {}
        self.steps: dict[str | None, int] = {}
        self.store: str | None = None  # the MLflow store this listener set, while a run is open in it

    @fmkit.hookimpl
    def fmkit_event(self, run: Any, event: Any) -> None:
        trackers = self.open.get(event.member) or self.start(event.member)
        if event.step is not None:
            self.steps[event.member] = event.step
        if event.values:
            values = {f"{event.name}/{key}": value for key, value in event.values.items()}
            for tracker in trackers:
                tracker.log(values, step=self.steps.get(event.member, 0))
        if event.name == "assess_end" or (event.name == "train_end" and event.member is not None):
            self.finish(event.member)

    def start(self, member: str | None) -> list[Any]:
        """Open the tracker run of ``member`` (None: the run's own) with the run's options as its parameters."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        label = self.run_name if member is None else f"{self.run_name}/{member}"
        self.directory.mkdir(parents=True, exist_ok=True)
        trackers = []
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "mlflow":
                self._use_own_mlflow_store()
                tracker = cls(PROJECT, run_name=label, tags={"fmkit.run": self.run_name,
                                                       **({"fmkit.member": member} if member else {})})
            elif name == "wandb":
                tracker = cls(os.environ.get("WANDB_PROJECT", PROJECT), name=label, group=self.run_name,
                              dir=str(self.directory))
            elif cls.requires_logging_directory:
                tracker = cls(label, self.directory)
            else:
                tracker = cls(label)
            tracker.start()
            tracker.store_init_configuration(self.config)
            trackers.append(tracker)
        self.open[member] = trackers
        return trackers

    def finish(self, member: str | None, failed: bool = False) -> None:
        """Close the tracker run of ``member`` (an MLflow run ends FAILED when the fmkit run failed)."""
        for tracker in self.open.pop(member, []):
            if failed and tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            else:
                tracker.finish()
        if self.store is not None and not self.open:
            import mlflow

            mlflow.set_tracking_uri(None)  # as it was: unset
            self.store = None

    def close(self, failed: bool) -> None:
        """Close every tracker run still open: the run ended (``failed``: by an error or an interruption)."""
        for member in list(self.open):
            self.finish(member, failed)

    def _use_own_mlflow_store(self) -> None:
        """MLflow's store under the run directory, unless the user named one (``MLFLOW_TRACKING_URI``)."""
        if self.store is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            self.store = f"sqlite:///{(self.directory / 'mlflow.db').resolve()}"
            mlflow.set_tracking_uri(self.store)

