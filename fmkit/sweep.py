"""``fmkit sweep``: a grid of plugin combinations x option values x seeds, every cell an ordinary run in
``RUNS_DIR/SWEEP/CELL``, read back as one leaderboard by ``fmkit compare``.

The grid is written in tox's factor syntax, as tox.ini's combination matrix is: ``{full,adapter}-{none,pgd}``
expands to four combinations, each a ``-``-joined list of plugins, where ``none`` and ``single`` leave a
stage to its default. ``--set KEY=A,B`` adds an axis of option values, ``--seeds`` one of seeds. Cells run
one at a time in this process (``fmkit.pipeline.execute``, as ``fmkit run`` does), ``--jobs N`` at once as
``python -m fmkit run`` subprocesses, or as Ray tasks. ``SWEEP/sweep.json`` records the grid and each
cell's status and scores: the same command again keeps finished cells, resumes interrupted ones from
their checkpoints (``fmkit run --resume``) and starts the rest. ``--search optuna`` samples the options
instead (ranges ``LOW:HIGH[:log]``, value lists as categories) with its study stored beside the cells,
and stops a trial whose dev score after an epoch falls below the median of the earlier trials' at that epoch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from fmkit import hookimpl, rundir
from fmkit.config import RunConfig, build_config, parse_setting, read_config_file
from fmkit.console import info
from fmkit.errors import FmkitError

EMPTY_FACTORS = {"none", "single"}
"""Grid factors that name no plugin: the stage keeps its default (as in tox.ini's environment names)."""
SET_BY_SWEEP = {"plugins", "seed", "name", "runs_dir", "overwrite"}
RECORD = "sweep.json"
CELL_FILES = ".cells"  # each subprocess cell's config and output (hidden: not a run for `fmkit compare`)
STORAGE = "optuna.db"
COMBINATION = "plugins"  # the search parameter that picks a grid combination
INSTALL_OPTUNA = "pip install 'fmkit[optuna]'"
EXAMPLE = "e.g. '{full,adapter}-{none,pgd}'"
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside braces and brackets (``a,{b,c}`` -> ``a``, ``{b,c}``)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def expand(grid: str) -> list[str]:
    """The plugin combinations of ``grid``, in order, each once: top-level commas separate alternatives,
    each ``{a,b}`` multiplies, ``-`` joins factors. ``{full,adapter}-{none,pgd}`` -> full-none, full-pgd,
    adapter-none, adapter-pgd."""
    text = "".join(grid.split())
    odd = sorted(set(re.sub(r"[\w{},-]", "", text)))
    if odd:
        raise FmkitError(f"grid {grid!r}: unexpected {odd[0]!r}; plugins are joined by '-' and alternatives "
                         f"written {{a,b}}, {EXAMPLE}")
    combinations = []
    for alternative in split_top_level(text):
        pieces = re.split(r"(\{[^{}]*\})", alternative)  # odd positions: the brace groups
        if any("{" in p or "}" in p for p in pieces[::2]):
            raise FmkitError(f"grid {grid!r}: braces must pair up and not nest, {EXAMPLE}")
        choices = [p[1:-1].split(",") if i % 2 else [p] for i, p in enumerate(pieces)]
        for chosen in itertools.product(*choices):
            factors = [f for f in "".join(chosen).split("-") if f]
            if factors:
                combinations.append("-".join(factors))
    if not combinations:
        raise FmkitError(f"empty grid {grid!r}: name plugin combinations, {EXAMPLE}")
    return list(dict.fromkeys(combinations))


def plugins_of(combination: str) -> list[str]:
    """``adapter-none-bagging`` -> ``["adapter", "bagging"]``."""
    return [name for name in combination.split("-") if name not in EMPTY_FACTORS]


def default_name(grid: str) -> str:
    """A sweep's folder when no ``--name`` is given: the grid, readable (``full+adapter-none+pgd``), so that
    the same command finds the same sweep again."""
    return "".join(grid.split()).replace("{", "").replace("}", "").replace(",", "+")


@dataclass(frozen=True)
class Range:
    """``LOW:HIGH[:log]``: an interval a search samples (whole numbers when both ends are)."""

    low: float
    high: float
    log: bool
    integer: bool
    text: str  # as the user wrote it


@dataclass(frozen=True)
class Axis:
    """An option the sweep varies: a list of values (a grid axis; a category for a search) or a range."""

    key: str
    values: tuple[str, ...] = ()
    range: Range | None = None

    @property
    def candidates(self) -> tuple[str, ...]:
        """Every value a cell may take, or a range's two ends (what validation tries)."""
        return self.values if self.range is None else (format_value(self.range.low), format_value(self.range.high))

    def describe(self) -> Any:
        return list(self.values) if self.range is None else self.range.text


def format_value(value: Any) -> str:
    """A sampled value as ``--set`` text: a float to 4 significant digits (a readable cell name; finer
    steps do not change a run), anything else as it is."""
    return repr(float(f"{value:.4g}")) if isinstance(value, float) else str(value)


def parse_range(item: str, raw: str) -> Range | None:
    """The range ``raw`` holds (``1e-5:1e-3:log``, ``1:4``), None when it is no range (its first part is
    not a number), or a one-line error for a malformed one."""
    parts = [p.strip() for p in raw.split(":")]
    if len(parts) < 2 or not NUMBER.fullmatch(parts[0]):
        return None
    low, high, *rest = parts
    if (not NUMBER.fullmatch(high) or rest not in ([], ["log"]) or float(low) >= float(high)
            or (rest and float(low) <= 0)):
        raise FmkitError(f"--set {item}: a range is LOW:HIGH or LOW:HIGH:log, numbers with LOW < HIGH (and LOW > 0 "
                         "for log), e.g. train.lr=1e-5:1e-3:log or train.epochs=2:6")
    integer = all(re.fullmatch(r"[+-]?\d+", p) for p in (low, high))
    kind = int if integer else float
    return Range(kind(low), kind(high), bool(rest), integer, raw)


def parse_settings(settings: Sequence[str]) -> tuple[list[str], list[Axis]]:
    """``--set`` items split into those every cell gets and the axes: ``KEY=A,B`` (commas outside brackets
    and braces) is a list of values, ``KEY=LOW:HIGH[:log]`` a range."""
    fixed, axes = [], []
    for item in settings:
        path, _ = parse_setting(item)  # checks KEY=VALUE
        key, raw = ".".join(path), item.partition("=")[2].strip()
        if path[0] in SET_BY_SWEEP:
            raise FmkitError(f"--set {item}: a sweep sets {path[0]} for each cell (GRID, --seeds, --name, --runs-dir)")
        bounds = parse_range(item, raw)
        values = [v.strip() for v in split_top_level(raw)]
        if bounds is not None:
            axes.append(Axis(key, range=bounds))
        elif len(values) > 1:
            if not all(values):
                raise FmkitError(f"--set {item}: an empty value in the list")
            axes.append(Axis(key, tuple(dict.fromkeys(values))))
        else:
            fixed.append(f"{key}={raw}")
    keys = [a.key for a in axes]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice:
        raise FmkitError(f"--set {twice}: given as an axis twice; give its values once, e.g. {twice}=A,B")
    return fixed, axes


def parse_seeds(seeds: str | None, default: int) -> list[int]:
    if seeds is None:
        return [default]
    try:
        parsed = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise FmkitError(f"--seeds {seeds!r}: comma-separated whole numbers, e.g. 42,43,44") from None
    return list(dict.fromkeys(parsed))


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a plugin combination, this cell's values of the axes (``KEY=VALUE``), a seed."""

    combination: str
    settings: tuple[str, ...]
    seed: int

    @property
    def plugins(self) -> list[str]:
        return plugins_of(self.combination)

    @property
    def name(self) -> str:
        """Its folder: ``adapter-pgd_train.lr=3e-4_seed42`` (characters a folder name should not hold become _)."""
        name = re.sub(r"[^\w.=+-]", "_", "_".join([self.combination, *self.settings, f"seed{self.seed}"]))
        if len(name) > 120:
            name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        return name


@dataclass
class Outcome:
    """How a cell ended: ``done`` (``scores`` from its metrics.json), ``failed`` (``error``), or
    ``interrupted`` (a subprocess cell the stopping sweep did not start)."""

    status: str
    scores: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def scores(target: Path) -> dict[str, Any]:
    """The headline numbers of a finished run, for sweep.json and the search."""
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    metric = metrics.get("primary_metric")
    return {"metric": metric, "dev": (metrics.get("dev") or {}).get(metric),
            "test": (metrics.get("test") or {}).get(metric), "seconds": metrics.get("seconds")}


def median_pruner() -> Any:
    """The search's pruning rule: after 3 finished trials, a trial whose dev score after an epoch is below the
    median of the earlier trials' scores at that epoch stops there (from its first epoch on)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


class Pruning:
    """An ``fmkit_event`` listener for a search trial's cell: it reports the dev score after each epoch of
    the cell's first trained model (a single model, or an ensemble's trunk or first member) to the study and,
    when ``median_pruner`` says so, raises StopTraining: the run ends as patience ends one (test scored on its
    best epoch) and the trial is told pruned. It holds the study's address, not the study, so that it travels
    to a Ray worker, which opens the study from its storage (a file every node sees)."""

    def __init__(self, storage: str, study: str, trial_id: int) -> None:
        self.storage, self.study, self.trial_id = storage, study, trial_id
        self.member: str | None = None
        self.reported = False

    @hookimpl
    def fmkit_event(self, run: Any, event: Any) -> None:
        import optuna

        from fmkit.plugin import StopTraining

        if event.name != "epoch_end":
            return
        if not self.reported:
            self.member, self.reported = event.member, True
        score = event.values.get(f"dev/{run.task.primary_metric}")
        if event.member != self.member or score is None:
            return
        study = optuna.load_study(study_name=self.study, storage=self.storage, pruner=median_pruner())
        trial = optuna.Trial(study, self.trial_id)
        trial.report(score, event.epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at", event.epoch)
            raise StopTraining


def train_cell(config: RunConfig, callbacks: Sequence[Any] = ()) -> Outcome:
    """Train one cell in this process as ``fmkit run`` does, continuing its interrupted run when that left a
    checkpoint; ``callbacks`` listen to its events. A user error (a NaN loss, say) fails the cell, not the
    sweep."""
    from fmkit.checkpoint import RunCheckpoints, resumable_config
    from fmkit.pipeline import execute
    from fmkit.registry import select

    target = Path(config.runs_dir) / str(config.name)
    resume = RunCheckpoints(rundir.partial_path(target)).exists()
    try:
        if resume:
            config = resumable_config(target, {})
        execute(config, select(config, callbacks=callbacks), resume=resume)
    except FmkitError as exc:
        return Outcome("failed", error=str(exc))
    return Outcome("done", scores(target))


Job = tuple[Cell, RunConfig, Sequence[Any]]  # a cell, its config, its event listeners
Runner = Callable[[Sequence[Job], Callable[[Cell], None]], Iterator[tuple[Cell, Outcome]]]


def in_process(jobs: Sequence[Job], started: Callable[[Cell], None]) -> Iterator[tuple[Cell, Outcome]]:
    """Cells one at a time in this process."""
    for cell, config, callbacks in jobs:
        started(cell)
        yield cell, train_cell(config, callbacks)


def in_subprocesses(parallel: int, directory: Path) -> Runner:
    """Cells ``parallel`` at a time, each ``python -m fmkit run`` with the cell's resolved config (or
    ``--resume``), its output in ``SWEEP/.cells/CELL.log``; the cores are shared out between them. A
    subprocess hears no listener of this one's (a search's trials are not pruned)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the children import this fmkit
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    running: set[subprocess.Popen] = set()
    lock, stopping = threading.Lock(), threading.Event()  # no child starts once the sweep stops

    def child(cell: Cell, config: RunConfig, started: Callable[[Cell], None]) -> Outcome:
        import yaml

        from fmkit.checkpoint import RunCheckpoints

        target = directory / cell.name
        files = directory / CELL_FILES
        files.mkdir(exist_ok=True)
        if RunCheckpoints(rundir.partial_path(target)).exists():
            args = ["--resume", str(target)]
        else:
            config_file = files / f"{cell.name}.yaml"
            rundir.write_text(config_file, yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
            args = ["--config", str(config_file)]
        started(cell)
        log = files / f"{cell.name}.log"
        with open(log, "a", encoding="utf-8") as output:
            with lock:
                if stopping.is_set():
                    return Outcome("interrupted")
                process = subprocess.Popen([sys.executable, "-m", "fmkit", "run", *args], stdout=output,
                                           stderr=subprocess.STDOUT, env=env)
                running.add(process)
            code = process.wait()
        if code == 0:
            return Outcome("done", scores(target))
        lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        errors = [line.removeprefix("fmkit: error: ") for line in lines if line.startswith("fmkit: error: ")]
        return Outcome("failed", error=(errors or lines or [f"exit status {code}"])[-1] + f" (output in {log})")

    def run(jobs: Sequence[Job], started: Callable[[Cell], None]) -> Iterator[tuple[Cell, Outcome]]:
        pool = ThreadPoolExecutor(parallel)
        futures = {pool.submit(child, cell, config, started): cell for cell, config, _ in jobs}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # interrupted: the children stop as `fmkit run` does on SIGTERM, keeping their checkpoints
            pool.shutdown(wait=False, cancel_futures=True)
            with lock:
                stopping.set()
            for process in running:
                if process.poll() is None:
                    process.terminate()
            pool.shutdown(wait=True)

    return run


def on_ray(address: str | None, parallel: int | None) -> Runner:
    """Cells as Ray tasks, set up as ensemble members are (``fmkit.members.ray_remote``): as many at once as
    the cluster has CPUs, or ``parallel``. The runs directory must be one the workers share."""

    def run(jobs: Sequence[Job], started: Callable[[Cell], None]) -> Iterator[tuple[Cell, Outcome]]:
        import ray

        from fmkit.members import ray_remote

        remote = ray_remote(train_cell, address)  # in a worker, as in this process
        at_once = parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        queue, pending = list(jobs), {}
        try:
            while queue or pending:
                while queue and len(pending) < at_once:
                    cell, config, callbacks = queue.pop(0)
                    started(cell)
                    pending[remote.remote(config, callbacks)] = cell
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                yield cell, ray.get(ready[0])
        finally:  # interrupted: the tasks stop as Ctrl-C stops a run, keeping their checkpoints
            for reference in pending:
                ray.cancel(reference)

    return run


class Sweep:
    """A sweep as the command line gives it; ``run`` trains what is not done yet and returns sweep.json's
    cells. Every bad input is a one-line FmkitError before any weights load."""

    def __init__(self, grid: str, *, inputs: dict[str, Any] | None = None, config_file: Path | None = None,
                 settings: Sequence[str] = (), seeds: str | None = None, name: str | None = None,
                 runs_dir: Path | None = None, search: str | None = None):
        from fmkit.registry import discover

        self.grid = grid
        self.available = discover()
        self.combinations = expand(grid)
        self.fixed, self.axes = parse_settings(settings)
        self.file_values = read_config_file(config_file) if config_file else {}
        self.inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
        self.seeds = parse_seeds(seeds, self.file_values.get("seed", RunConfig.model_fields["seed"].default))
        self.search = search
        runs = Path(runs_dir if runs_dir is not None else self.file_values.get("runs_dir", "runs"))
        self.directory = rundir.check_target(runs, name or default_name(grid), overwrite=True)
        self._lock = threading.Lock()

    # -- what the cells are --------------------------------------------------------------------------------
    def applies(self, key: str, plugins: Sequence[str]) -> bool:
        """Whether the option ``key`` concerns a cell of ``plugins``: a core option always; a plugin's only
        where that plugin takes part (chosen, or the default of a stage none of ``plugins`` serves)."""
        from fmkit.registry import DEFAULTS

        plugin = self.available.get(key.split(".")[0])
        if plugin is None or plugin.cls is None:
            return True  # a core option, or an unknown one for build_config to name
        if plugin.name in plugins:
            return True
        stages = {self.available[p].stage for p in plugins if p in self.available}
        return DEFAULTS.get(plugin.stage) == plugin.name and plugin.stage not in stages

    def cells(self) -> list[Cell]:
        """The grid: combinations x the values of the axes that concern each x seeds."""
        found = []
        for combination in self.combinations:
            axes = [a for a in self.axes if self.applies(a.key, plugins_of(combination))]
            for values in itertools.product(*(a.values for a in axes)):
                settings = tuple(f"{a.key}={v}" for a, v in zip(axes, values))
                found.extend(Cell(combination, settings, seed) for seed in self.seeds)
        return found

    def trial_cell(self, params: dict[str, Any]) -> Cell:
        """The cell of a search trial's values."""
        combination = params.get(COMBINATION, self.combinations[0])
        settings = tuple(f"{a.key}={format_value(params[a.key])}" for a in self.axes
                         if self.applies(a.key, plugins_of(combination)))
        return Cell(combination, settings, self.seeds[0])

    def probe_cells(self) -> list[Cell]:
        """Cells that together try every value a search may give each option (a range's two ends)."""
        found = []
        for combination in self.combinations:
            axes = [a for a in self.axes if self.applies(a.key, plugins_of(combination))]
            first = [a.candidates[0] for a in axes]
            variants = [first] + [first[:i] + [v] + first[i + 1:] for i, a in enumerate(axes) for v in a.candidates[1:]]
            found.extend(Cell(combination, tuple(f"{a.key}={v}" for a, v in zip(axes, values)), self.seeds[0])
                         for values in variants)
        return found

    def config(self, cell: Cell) -> RunConfig:
        """The cell's validated run config: the config file and run inputs, the settings that concern its
        plugins, its values of the axes; its name and folder in the sweep."""
        plugins = cell.plugins
        file_values = {k: v for k, v in self.file_values.items() if self.applies(k, plugins)}
        flags = {**self.inputs, "plugins": plugins, "seed": cell.seed, "name": cell.name,
                 "runs_dir": str(self.directory)}
        fixed = [s for s in self.fixed if self.applies(s.partition("=")[0], plugins)]
        return build_config(file_values, flags, [*fixed, *cell.settings], set(self.available))

    def definition(self) -> dict[str, Any]:
        """What makes the cells what they are (recorded in sweep.json: a changed grid is refused)."""
        values = {"grid": self.grid, "combinations": self.combinations, "seeds": self.seeds,
                  "axes": {a.key: a.describe() for a in self.axes}, "settings": self.fixed,
                  "inputs": self.inputs, "config": self.file_values, "search": self.search}
        return json.loads(json.dumps(values, default=str))

    # -- checks before anything trains ---------------------------------------------------------------------
    def validate(self) -> None:
        from fmkit.registry import lookup, select

        for combination in self.combinations:
            for plugin in plugins_of(combination):
                lookup(plugin, self.available)
        for key in [s.partition("=")[0] for s in self.fixed] + [a.key for a in self.axes]:
            if not any(self.applies(key, plugins_of(c)) for c in self.combinations):
                raise FmkitError(f"--set {key}: plugin {key.split('.')[0]!r} is in no combination of the grid")
        if self.search is None:
            ranged = next((a for a in self.axes if a.range is not None), None)
            if ranged:
                raise FmkitError(f"--set {ranged.key}={ranged.describe()}: a range is sampled by --search optuna; "
                                 f"a grid takes a list of values, e.g. {ranged.key}=A,B")
        elif len(self.seeds) > 1:
            raise FmkitError("--search optuna tunes on one seed: give one in --seeds (then sweep the best with several)")
        elif not self.axes and len(self.combinations) == 1:
            raise FmkitError("--search optuna: nothing to search; give a range (--set train.lr=1e-5:1e-3:log), a list "
                             f"of values (--set adapter.r=4,8,16) or several combinations, {EXAMPLE}")
        cells = self.cells() if self.search is None else self.probe_cells()
        names: dict[str, Cell] = {}
        for cell in cells:
            if names.setdefault(cell.name, cell) != cell:
                raise FmkitError(f"cells {names[cell.name]} and {cell} would share the folder {cell.name}")
            config = self.config(cell)
            select(config, self.available)
            for path in (config.data.train, config.data.dev, config.data.test):
                if path is not None and not Path(path).is_file():
                    raise FmkitError(f"{path}: file does not exist")

    # -- sweep.json -----------------------------------------------------------------------------------------
    def open(self, overwrite: bool) -> dict[str, Any]:
        """The sweep's record: the one there (the same grid), or a new one."""
        import fmkit

        record_file = self.directory / RECORD
        definition = self.definition()
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text(encoding="utf-8"))
                old = record["grid"]
            except (ValueError, KeyError, TypeError) as exc:
                raise FmkitError(f"{record_file}: corrupt ({exc}); pass --overwrite to start the sweep afresh") from None
            if overwrite:
                shutil.rmtree(self.directory)
                info(f"removed the earlier sweep in {self.directory}")
            elif old != definition:
                key = next(k for k in definition if old.get(k) != definition[k])
                raise FmkitError(f"sweep {self.directory} was made with another grid ({key}: {json.dumps(old.get(key))} "
                                 f"-> {json.dumps(definition[key])}); use another --name, or --overwrite to start afresh")
            else:
                return record
        elif self.directory.is_dir() and any(self.directory.iterdir()):
            raise FmkitError(f"{self.directory} exists and is not a sweep (no {RECORD}): choose another --name")
        record = {"fmkit_version": fmkit.__version__, "grid": definition, "cells": {}}
        self.save(record)
        return record

    def save(self, record: dict[str, Any]) -> None:
        with self._lock:
            rundir.write_json(self.directory / RECORD, record)

    def note(self, record: dict[str, Any], cell: Cell, **values: Any) -> dict[str, Any]:
        """Update ``cell``'s entry in sweep.json."""
        with self._lock:
            entry = record["cells"].setdefault(cell.name, {"plugins": cell.plugins, "combination": cell.combination,
                                                           "settings": list(cell.settings), "seed": cell.seed})
            entry.update(values)
        self.save(record)
        return entry

    def state(self, cell: Cell) -> str:
        """``done`` (a complete run), ``partial`` (an interrupted one with a checkpoint) or ``pending``."""
        from fmkit.checkpoint import RunCheckpoints
        from fmkit.compare import is_run

        target = self.directory / cell.name
        if is_run(target):
            return "done"
        return "partial" if RunCheckpoints(rundir.partial_path(target)).exists() else "pending"

    # -- running -------------------------------------------------------------------------------------------
    def run(self, jobs: int | None = None, executor: str = "local", ray_address: str | None = None,
            trials: int | None = None, overwrite: bool = False) -> dict[str, dict[str, Any]]:
        """Train the cells not done yet (or the search's trials); sweep.json's cells, by name."""
        if jobs is not None and jobs < 1:
            raise FmkitError(f"--jobs {jobs}: give at least 1")
        if ray_address is not None and executor != "ray":
            raise FmkitError("--ray-address is for --executor ray")
        if executor == "ray" and find_spec("ray") is None:
            from fmkit.members import INSTALL_RAY

            raise FmkitError(f"--executor ray needs Ray, which is not installed: {INSTALL_RAY}")
        if self.search is not None:
            if find_spec("optuna") is None:
                raise FmkitError(f"--search optuna needs Optuna, which is not installed: {INSTALL_OPTUNA}")
            if trials is None or trials < 1:
                raise FmkitError("--search optuna needs --trials N (N >= 1): how many trials the study runs in all")
        elif trials is not None:
            raise FmkitError("--trials is for --search optuna")
        self.validate()
        record = self.open(overwrite)
        if executor == "ray":
            runner = on_ray(ray_address, jobs)
        elif (jobs or 1) > 1:
            runner = in_subprocesses(jobs or 1, self.directory)
        else:
            runner = in_process
        if self.search is None:
            self._grid(record, runner)
        else:
            self._search(record, runner, trials or 0, jobs or 1)
        return record["cells"]

    def _train(self, record: dict[str, Any], runner: Runner, cells: Sequence[Cell], first: int,
               total: int, listeners: dict[str, Sequence[Any]] | None = None) -> Iterator[tuple[Cell, Outcome]]:
        """Run ``cells`` with ``runner`` (``listeners``: event listeners by cell name), noting each start and outcome in sweep.json and on stderr (cell
        ``first`` of ``total``, the next, ...); an interruption marks the running cells ``interrupted``
        (their checkpoints are kept)."""
        running: set[str] = set()
        counter = itertools.count(first)

        def started(cell: Cell) -> None:
            running.add(cell.name)
            resuming = " (resuming)" if self.state(cell) == "partial" else ""
            info(f"[{next(counter)}/{total}] {cell.name}{resuming}")
            self.note(record, cell, status="running", error=None)

        outcomes = runner([(c, self.config(c), (listeners or {}).get(c.name, ())) for c in cells], started)
        try:
            for cell, outcome in outcomes:
                running.discard(cell.name)
                self.note(record, cell, status=outcome.status, error=outcome.error, **outcome.scores)
                info(f"{cell.name}: {describe(outcome)}")
                yield cell, outcome
        except BaseException:
            for name in running:
                record["cells"][name]["status"] = "interrupted"
            self.save(record)
            raise
        finally:
            outcomes.close()  # stops the subprocesses or Ray tasks still running

    def _grid(self, record: dict[str, Any], runner: Runner) -> None:
        cells = self.cells()
        states = {cell: self.state(cell) for cell in cells}
        for cell, state in states.items():
            if state != "done":
                self.note(record, cell, status="interrupted" if state == "partial" else "pending")
            elif record["cells"].get(cell.name, {}).get("status") != "done":  # finished before sweep.json said so
                self.note(record, cell, status="done", error=None, **scores(self.directory / cell.name))
        todo = [c for c in cells if states[c] != "done"]
        counts = [sum(s == state for s in states.values()) for state in ("done", "partial", "pending")]
        info(f"sweep {self.directory}: {len(cells)} cells; {counts[0]} finished, {counts[1]} to resume, "
             f"{counts[2]} to start")
        for _ in self._train(record, runner, todo, counts[0] + 1, len(cells)):
            pass

    def _search(self, record: dict[str, Any], runner: Runner, trials: int, parallel: int) -> None:
        """Ask the study for values, train their cells, tell it the dev score; an interrupted trial is
        asked again with its values, so its cell resumes from its checkpoint."""
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{self.directory / STORAGE}"
        study = optuna.create_study(study_name=self.directory.name, storage=storage, load_if_exists=True,
                                    direction="maximize", pruner=median_pruner())
        # seeded, and differently after each restart: a resumed study must not draw its first values again
        study.sampler = optuna.samplers.TPESampler(seed=self.seeds[0] + len(study.trials))
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
        distributions = self.distributions()

        def counted() -> int:
            return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or "error" in t.user_attrs
                       for t in study.get_trials(deepcopy=False))

        info(f"sweep {self.directory}: a search of {trials} trials; {counted()} done")
        while (left := trials - counted()) > 0:
            asked: dict[str, list[Any]] = {}
            for _ in range(min(parallel, left)):
                trial = study.ask(distributions)
                asked.setdefault(self.trial_cell(trial.params).name, []).append(trial)
            cells = [self.trial_cell(found[0].params) for found in asked.values()]
            for cell in cells:
                self.note(record, cell, trial=asked[cell.name][0].number)
            finished = [(c, Outcome("done", scores(self.directory / c.name))) for c in cells if self.state(c) == "done"]
            for cell, _ in finished:
                info(f"{cell.name}: trained before, with the same values: its score is told again")
            todo = [c for c in cells if self.state(c) != "done"]
            first = counted() + len(finished) + 1
            listeners = {name: [Pruning(storage, study.study_name, found[0]._trial_id)] for name, found in asked.items()}
            for cell, outcome in [*finished, *self._train(record, runner, todo, first, trials, listeners)]:
                # from the storage, not this process's cache: the listener may have run in a Ray worker
                pruned_at = optuna.storages.RDBStorage(storage).get_trial(asked[cell.name][0]._trial_id).user_attrs.get(
                    "pruned_at")
                if pruned_at is not None:
                    self.note(record, cell, pruned_at=pruned_at)
                for trial in asked[cell.name]:
                    tell(study, trial, outcome, pruned_at)

    def distributions(self) -> dict[str, Any]:
        """Optuna's distributions: the combination (when there are several) and each axis."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        found: dict[str, Any] = {}
        if len(self.combinations) > 1:
            found[COMBINATION] = CategoricalDistribution(self.combinations)
        for axis in self.axes:
            bounds = axis.range
            if bounds is None:
                found[axis.key] = CategoricalDistribution(axis.values)
            elif bounds.integer:
                found[axis.key] = IntDistribution(int(bounds.low), int(bounds.high), log=bounds.log)
            else:
                found[axis.key] = FloatDistribution(bounds.low, bounds.high, log=bounds.log)
        return found


def tell(study: Any, trial: Any, outcome: Outcome, pruned_at: int | None = None) -> None:
    """Give the study a trial's result: its dev score, pruned (at epoch ``pruned_at``), or failed (with why)."""
    from optuna.trial import TrialState

    dev = outcome.scores.get("dev")
    if outcome.status == "done" and pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
    elif outcome.status == "done" and dev is not None:
        study.tell(trial, dev)
    else:
        trial.set_user_attr("error", outcome.error or "no dev score")
        study.tell(trial, state=TrialState.FAIL)


def describe(outcome: Outcome) -> str:
    if outcome.status == "failed":
        return f"failed: {outcome.error}"
    found = outcome.scores
    dev = f" (dev {found['metric']} {found['dev']:.4f})" if found.get("dev") is not None else ""
    return outcome.status + dev


def summary(cells: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The names of the finished cells and of the failed ones."""
    done = [name for name, entry in cells.items() if entry.get("status") == "done"]
    failed = [name for name, entry in cells.items() if entry.get("status") == "failed"]
    return done, failed


def failures(cells: dict[str, dict[str, Any]], record: Path, search: bool) -> str:
    """One line for the cells that failed: a grid tries them again when run again; a search has counted them
    as failed trials."""
    _, failed = summary(cells)
    first = cells[failed[0]]
    after = "the study counts them as failed trials" if search else "the same command tries them again"
    return f"{len(failed)} of {len(cells)} cells failed (see {record}); {failed[0]}: {first.get('error')}; {after}"

