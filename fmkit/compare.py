"""``fmkit compare``: a leaderboard of saved runs, read back from their run directories.

One row per run: its plugins, the options that differ between the runs, dev and test metric, robust
metric and attack success rate, time, trainable parameters and peak memory, sorted by dev (the metric
that selected each model; test is only reported). A test set of a few hundred examples moves the score
by points with the seed alone, so each run's test score is compared with the best run's by a paired
bootstrap over the same test examples (``paired_bootstrap``, on the saved ``predictions/test.jsonl``),
and a mark says where the 95% interval of the difference includes zero.

Only numpy, seqeval and scikit-learn (the metrics fmkit's evaluation uses) are needed: no torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from fmkit.config import flatten_options
from fmkit.errors import FmkitError

PREDICTIONS = Path("predictions") / "test.jsonl"
IGNORED_OPTIONS = {"name", "runs_dir", "overwrite", "executor", "ray_address", "plugins", "train.progress"}
"""Config keys that never change a run's result (or have a column of their own), left out of the options."""
BEST, TIED = "*", "~"
"""The best run (by dev), and runs whose test difference from it has a 95% interval that includes zero."""


@runtime_checkable
class Metric(Protocol):
    """A task metric a bootstrap can resample quickly: per-example sufficient statistics that add up
    (``statistics``), and the metric of their totals (``value``), equal to ``metric(gold, predicted)``
    on any resample. A plain ``(gold, predicted) -> float`` callable works too, called once per resample."""

    name: str

    def __call__(self, gold: Sequence, predicted: Sequence) -> float: ...

    def statistics(self, gold: Sequence, predicted: Sequence) -> np.ndarray:
        """(examples, k) counts."""

    def value(self, totals: np.ndarray) -> np.ndarray:
        """(..., k) summed counts -> (...) metric values."""


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (``zero_division=0``, as fmkit scores)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _f1(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """F1 as seqeval and scikit-learn compute it: from precision and recall, 0 when both are 0."""
    precision, recall = _divide(tp, predicted), _divide(tp, true)
    return _divide(2 * precision * recall, precision + recall)


@dataclass(frozen=True)
class EntityF1:
    """seqeval's strict entity-level micro F1 (``fmkit.evaluate.scores``' ``f1``), decomposed per sentence
    into (correct entities, predicted entities, gold entities): resampling sentences and adding their
    counts gives exactly seqeval's F1 on the resampled sentences, a thousand times without re-decoding."""

    scheme: str | None = "IOB2"
    name: str = "f1"

    def __call__(self, gold: Sequence, predicted: Sequence) -> float:
        from fmkit.evaluate import scores
        from fmkit.types import Task

        return scores(Task("ner", [], self.scheme), list(gold), list(predicted))["f1"]

    def statistics(self, gold: Sequence, predicted: Sequence) -> np.ndarray:
        from seqeval.scheme import IOB2, IOBES, Entities

        scheme = IOBES if self.scheme == "IOBES" else IOB2
        true = Entities([list(g) for g in gold], scheme).entities
        found = Entities([list(p) for p in predicted], scheme).entities
        return np.array([[len({e.to_tuple() for e in t} & {e.to_tuple() for e in p}), len(p), len(t)]
                         for t, p in zip(true, found)], dtype=np.int64).reshape(len(gold), 3)

    def value(self, totals: np.ndarray) -> np.ndarray:
        return _f1(totals[..., 0], totals[..., 1], totals[..., 2])


@dataclass(frozen=True)
class LabelMetric:
    """``accuracy`` or ``macro_f1`` of labels (scikit-learn's, as ``fmkit.evaluate.scores``), decomposed
    per example into (correct, then per label: true positive, predicted, gold). Macro F1 averages over
    the labels present in the resample's gold or predictions, as scikit-learn does. ``labels`` must hold
    every label of the gold and predictions compared."""

    labels: tuple[str, ...]
    name: str = "accuracy"

    def __call__(self, gold: Sequence, predicted: Sequence) -> float:
        from fmkit.evaluate import scores
        from fmkit.types import Task

        return scores(Task("classify", list(self.labels)), list(gold), list(predicted))[self.name]

    def statistics(self, gold: Sequence, predicted: Sequence) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        k = len(self.labels)
        stats = np.zeros((len(gold), 1 + 3 * k), dtype=np.int64)
        for row, (g, p) in enumerate(zip(gold, predicted)):
            stats[row, 0] = g == p
            stats[row, 1 + 3 * index[p] + 1] += 1
            stats[row, 1 + 3 * index[g] + 2] += 1
            if g == p:
                stats[row, 1 + 3 * index[g]] += 1
        return stats

    def value(self, totals: np.ndarray) -> np.ndarray:
        if self.name == "accuracy":
            examples = totals[..., 1 + 1::3].sum(axis=-1)  # every example is predicted once
            return _divide(totals[..., 0], examples)
        tp, predicted, true = totals[..., 1::3], totals[..., 2::3], totals[..., 3::3]
        present = (predicted + true) > 0
        per_label = np.where(present, _f1(tp, predicted, true), 0.0)
        return _divide(per_label.sum(axis=-1), present.sum(axis=-1))


def task_metric(task: dict[str, Any], name: str, seen: Iterable[str] = ()) -> Metric:
    """The metric ``name`` of a saved run's task (config.json's ``task``): seqeval entity F1 for ``ner``,
    accuracy or macro-F1 otherwise, over the task's labels and any other label ``seen`` in gold or
    predictions (a gold label the model never trained on still counts as a miss)."""
    if task.get("kind") == "ner":
        if name != "f1":
            raise FmkitError(f"{name}: fmkit compare resamples the entity F1 of NER runs, not {name}")
        return EntityF1(task.get("scheme") or "IOB2")
    if name not in ("accuracy", "macro_f1"):
        raise FmkitError(f"{name}: not a classification metric (accuracy or macro_f1)")
    labels = list(task.get("labels", ()))
    return LabelMetric(tuple(labels + sorted(set(seen) - set(labels), key=str)), name)


def paired_bootstrap(gold: Sequence, a: Sequence, b: Sequence, metric: Metric | Callable[[Sequence, Sequence], float],
                     resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean, 2.5th and 97.5th percentile of ``metric(gold, a) - metric(gold, b)`` over ``resamples``
    resamples of the examples with replacement, the same examples for both (paired: the noise of
    which examples the test set happened to hold cancels). A fixed ``seed`` gives the same interval
    on every call. ``metric`` is a ``Metric`` (fast: counts are added) or any ``(gold, predicted) ->
    float``. Identical predictions give exactly (0, 0, 0)."""
    n = len(gold)
    if not (n == len(a) == len(b)):
        raise ValueError(f"paired_bootstrap: {n} gold, {len(a)} and {len(b)} predicted: not the same examples")
    if n == 0:
        raise ValueError("paired_bootstrap: no examples")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(resamples, n))
    if isinstance(metric, Metric):
        stats_a, stats_b = metric.statistics(gold, a), metric.statistics(gold, b)
        diffs = np.empty(resamples, dtype=np.float64)
        chunk = max(1, 4_000_000 // n)  # resamples at a time: (chunk, n) counts stay small for big test sets
        for start in range(0, resamples, chunk):
            part = rows[start:start + chunk]
            counts = np.zeros(part.shape, dtype=np.int64)  # how often each example is drawn
            np.add.at(counts, (np.arange(len(part))[:, None], part), 1)
            diffs[start:start + chunk] = metric.value(counts @ stats_a) - metric.value(counts @ stats_b)
    else:
        diffs = np.array([metric([gold[i] for i in r], [a[i] for i in r])
                          - metric([gold[i] for i in r], [b[i] for i in r]) for r in rows], dtype=np.float64)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


@dataclass
class SavedRun:
    """What ``fmkit compare`` reads of one run directory: config.json's record and metrics.json."""

    path: Path
    record: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def task(self) -> dict[str, Any]:
        return dict(self.record.get("task") or {})

    @property
    def metric(self) -> str:
        return str(self.metrics.get("primary_metric") or ("f1" if self.metrics.get("task") == "ner" else "accuracy"))

    @property
    def plugins(self) -> list[str]:
        """Every plugin that took part, defaults included (``hf``, ``full``), in stage order."""
        from fmkit.registry import STAGES

        described = self.record.get("plugins") or {}
        order = {stage: i for i, stage in enumerate(STAGES)}
        if not described:
            return list(self.record.get("config", {}).get("plugins", []))
        return sorted(described, key=lambda name: order.get(described[name].get("stage"), len(order)))

    def options(self) -> dict[str, Any]:
        """The resolved options, flattened (``train.lr``, ``pgd.steps``): the config's, and each
        plugin's as config.json resolved them."""
        config = dict(self.record.get("config") or {})
        given = config.pop("plugin_options", {}) or {}
        flat = flatten_options(config)
        for name, values in given.items():
            flat.update(flatten_options(values, f"{name}."))
        for name, info in (self.record.get("plugins") or {}).items():
            flat.update(flatten_options(info.get("options") or {}, f"{name}."))
        return {key: value for key, value in flat.items() if key not in IGNORED_OPTIONS}

    def predictions(self) -> tuple[list, list] | None:
        """Gold and predicted labels of every test example (``predictions/test.jsonl``), or None."""
        path = self.path / PREDICTIONS
        if not path.is_file():
            return None
        gold, predicted = [], []
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    gold.append(row["gold"])
                    predicted.append(row["pred"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FmkitError(f"{path}: unreadable test predictions ({exc})") from None
        return gold, predicted



def is_run(path: Path) -> bool:
    """A finished fmkit run: config.json written by fmkit (not a model's config.json) and metrics.json."""
    if not (path / "metrics.json").is_file():
        return False
    try:
        return "fmkit_version" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Each path that is a run, or the runs a folder holds (a sweep: at any depth, not inside a run and
    not in hidden folders such as an interrupted run's ``.NAME.partial``), each run once, in order.
    A path that is neither is a one-line error."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FmkitError(f"{path}: no such run directory")
        if not path.is_dir():
            raise FmkitError(f"{path}: not a run directory (a file)")
        if is_run(path):
            found.setdefault(path.resolve(), None)
            continue
        inside = sorted(_runs_under(path))
        if not inside:
            why = "an incomplete run (no metrics.json)" if (path / "config.json").is_file() else "no config.json"
            raise FmkitError(f"{path}: not a run directory ({why}) and holds no runs")
        for run in inside:
            found.setdefault(run.resolve(), None)
    return list(found)


def _runs_under(folder: Path) -> Iterable[Path]:
    try:
        children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return
    for child in children:
        if is_run(child):
            yield child
        else:
            yield from _runs_under(child)


def read_run(path: Path) -> SavedRun:
    """A run directory's config.json record and metrics.json, or a one-line error."""
    records = []
    for name in ("config.json", "metrics.json"):
        try:
            records.append(json.loads((path / name).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise FmkitError(f"{path / name}: unreadable ({exc})") from None
    return SavedRun(path, *records)


@dataclass
class Row:
    """One run on the leaderboard. ``difference``: its test metric minus the best run's; ``low``/``high``:
    the paired bootstrap 95% interval of that difference (None with a ``note`` when it cannot be had)."""

    name: str
    path: str
    plugins: list[str]
    options: dict[str, Any]
    dev: float | None
    test: float | None
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    includes_zero: bool | None = None
    best: bool = False
    robust: dict[str, dict[str, float | None]] = field(default_factory=dict)  # attack -> metric, success rate
    seconds: float | None = None
    trainable_params: int | None = None
    peak_memory_mb: float | None = None
    peak_gpu_memory_mb: float | None = None
    note: str = ""

    @property
    def mark(self) -> str:
        return BEST if self.best else (TIED if self.includes_zero else "")


@dataclass
class Leaderboard:
    """The rows sorted by dev metric (best first), the options that differ, and notes for the reader."""

    task: str
    metric: str
    rows: list[Row]
    options: list[str]
    attacks: list[str]
    resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "resamples": self.resamples, "seed": self.seed,
                "options": self.options, "attacks": self.attacks, "notes": self.notes,
                "runs": [{**asdict(row), "mark": row.mark} for row in self.rows]}


def leaderboard(paths: Sequence[Path], resamples: int = 1000, seed: int = 0) -> Leaderboard:
    """Read the runs (folders of runs expand), refuse runs of different tasks or metrics in one line,
    sort by dev metric, and bootstrap each run's test metric against the best run's."""
    runs = [read_run(p) for p in find_runs(paths)]
    kinds = {(r.task.get("kind") or r.metrics.get("task"), r.metric) for r in runs}
    if len(kinds) > 1:
        described = ", ".join(f"{r.path.name} ({r.task.get('kind') or r.metrics.get('task')}, {r.metric})" for r in runs)
        raise FmkitError(f"runs of different tasks or metrics cannot share a leaderboard: {described}")
    (kind, metric), = kinds
    names = _names([r.path for r in runs])
    options = {id(r): r.options() for r in runs}
    differing = _differing(list(options.values()))
    attacks = sorted({a for r in runs for a in (r.metrics.get("robust") or {})})
    rows = []
    for run, name in zip(runs, names):
        rows.append(Row(
            name=name, path=str(run.path), plugins=run.plugins,
            options={key: options[id(run)].get(key) for key in differing},
            dev=_score(run.metrics, "dev", metric), test=_score(run.metrics, "test", metric),
            robust={a: _robust(run.metrics, a, metric) for a in attacks if a in (run.metrics.get("robust") or {})},
            seconds=run.metrics.get("seconds"), trainable_params=_trainable(run.metrics),
            peak_memory_mb=run.metrics.get("peak_memory_mb"), peak_gpu_memory_mb=run.metrics.get("peak_gpu_memory_mb")))
    order = sorted(range(len(rows)), key=lambda i: (-(rows[i].dev if rows[i].dev is not None else -math.inf),
                                                    rows[i].name))
    rows, runs = [rows[i] for i in order], [runs[i] for i in order]
    rows[0].best = True
    board = Leaderboard(kind, metric, rows, differing, attacks, resamples, seed)
    _intervals(board, runs, metric)
    if any(r.dev is not None and r.dev == rows[0].dev for r in rows[1:]):
        board.notes.append("several runs share the best dev score: the first by name is marked best")
    return board


def _names(paths: list[Path]) -> list[str]:
    """Each run's path below the folder all of them share (a sweep's cells), or its name alone."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath(paths))
    return [str(p.relative_to(common)) for p in paths]


def _differing(options: list[dict[str, Any]]) -> list[str]:
    """Keys whose values differ between the runs that have them (a key only some runs have, equal in all
    of those, is one plugin's option: the plugins column shows that difference)."""
    keys = sorted({k for o in options for k in o})
    canonical = lambda value: json.dumps(value, sort_keys=True, default=str)  # noqa: E731
    return [k for k in keys if len({canonical(o[k]) for o in options if k in o}) > 1]


def _score(metrics: dict[str, Any], split: str, metric: str) -> float | None:
    value = (metrics.get(split) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _robust(metrics: dict[str, Any], attack: str, metric: str) -> dict[str, float | None]:
    """The attack's scores on test (on dev when the run had no test split)."""
    by_split = metrics["robust"][attack]
    scored = by_split.get("test") or by_split.get("dev") or {}
    return {metric: scored.get(metric), "attack_success_rate": scored.get("attack_success_rate")}


def _trainable(metrics: dict[str, Any]) -> int | None:
    """Trainable parameters of the run: summed over its members (each member trains its own)."""
    counts = [m.get("trainable_params") for m in (metrics.get("members") or {}).values()]
    counts = [c for c in counts if isinstance(c, int)]
    return sum(counts) if counts else None


def _intervals(board: Leaderboard, runs: list[SavedRun], name: str) -> None:
    """Each row's test difference from the best run with its paired bootstrap interval, where both runs
    saved predictions on the same test examples; a note on the row where not."""
    best = board.rows[0]
    predictions = [run.predictions() for run in runs]
    reference = predictions[0]
    seen = {label for saved in predictions if saved and board.task != "ner" for labels in saved for label in labels}
    metric = task_metric(runs[0].task or {"kind": board.task}, name, seen)
    for row, own in zip(board.rows, predictions):
        if row.test is not None and best.test is not None:
            row.difference = row.test - best.test
        if row.test is None:
            row.note = "no test split"
        elif own is None:
            row.note = f"no saved test predictions ({PREDICTIONS}): no interval"
        elif reference is None:
            row.note = "the best run saved no test predictions: no interval"
        elif len(own[0]) != len(reference[0]) or own[0] != reference[0]:
            row.difference = None
            row.note = (f"test set differs from the best run's ({len(own[0])} vs {len(reference[0])} examples"
                        f"{', other gold labels' if len(own[0]) == len(reference[0]) else ''}): no interval")
        else:
            _, row.low, row.high = paired_bootstrap(reference[0], own[1], reference[1], metric,
                                                    board.resamples, board.seed)
            row.includes_zero = row.low <= 0.0 <= row.high
    if any(r.note.startswith("test set differs") for r in board.rows):
        board.notes.append("some runs were tested on other examples than the best run: their test scores are "
                           "not comparable, and they get no interval")


# ---------------------------------------------------------------------------------------------- output

def table_cells(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows as text, the same for every format but JSON."""
    m = board.metric
    header = ["", "run", "plugins", *board.options, f"dev {m}", f"test {m}", "test - best [95% CI]"]
    for attack in board.attacks:
        header += [f"{attack} {m}", f"{attack} success"]
    header += ["time s", "trainable", "peak MiB", "peak GPU MiB", "note"]
    rows = []
    for row in board.rows:
        cells = [row.mark, row.name, ",".join(row.plugins), *(_value(row.options[k]) for k in board.options),
                 _number(row.dev), _number(row.test), _interval(row)]
        for attack in board.attacks:
            scored = row.robust.get(attack, {})
            cells += [_number(scored.get(m)), _number(scored.get("attack_success_rate"))]
        cells += [_number(row.seconds, "{:.0f}"), _number(row.trainable_params, "{:,}"),
                  _number(row.peak_memory_mb, "{:.0f}"), _number(row.peak_gpu_memory_mb, "{:.0f}"), row.note]
        rows.append(cells)
    empty = {"note": not any(r.note for r in board.rows),  # columns no run fills are left out
             "peak MiB": all(r.peak_memory_mb is None for r in board.rows),
             "peak GPU MiB": all(r.peak_gpu_memory_mb is None for r in board.rows)}
    keep = [i for i, name in enumerate(header) if not empty.get(name)]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def _value(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any, form: str = "{:.4f}") -> str:
    return "" if value is None else form.format(value)


def _interval(row: Row) -> str:
    if row.difference is None:
        return ""
    if row.low is None:
        return f"{row.difference:+.4f}"
    return f"{row.difference:+.4f} [{row.low:+.4f}, {row.high:+.4f}]"


def legend(board: Leaderboard) -> list[str]:
    """What the marks mean, and the notes: printed under the table."""
    return [f"{BEST} best dev {board.metric}; {TIED} the 95% interval of its test {board.metric} minus the best "
            f"run's includes zero (paired bootstrap, {board.resamples} resamples of the test examples, seed "
            f"{board.seed}): not shown to differ", *board.notes]


def render(board: Leaderboard, form: str = "text") -> str:
    """The leaderboard as ``text`` (aligned columns), ``md`` (a Markdown table), ``csv`` or ``json``."""
    if form == "json":
        return json.dumps(board.as_dict(), indent=2) + "\n"
    header, rows = table_cells(board)
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["mark" if not h else h for h in header])
        writer.writerows(rows)
        return out.getvalue()
    if form == "md":
        escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(escape(h) for h in header) + " |",
                 "|" + "|".join("---" if i < 3 + len(board.options) else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in legend(board)) + "\n"
    if form != "text":
        raise ValueError(f"unknown format {form!r}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines + [""] + legend(board)) + "\n"


def print_rich(board: Leaderboard) -> bool:
    """Print the leaderboard as a rich table on the terminal; False when rich is not installed."""
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        return False
    header, rows = table_cells(board)
    table = Table(title=f"{len(rows)} runs, {board.task}, sorted by dev {board.metric}")
    for i, name in enumerate(header):
        numeric = i >= 3 + len(board.options) and name != "note"
        table.add_column(escape(name), justify="right" if numeric else "left", overflow="fold")
    for row, cells in zip(board.rows, rows):  # "[low, high]" is text, not rich markup
        table.add_row(*map(escape, cells), style="bold" if row.best else None)
    console = Console()
    console.print(table)
    for line in legend(board):
        console.print(escape(line), highlight=False)
    return True
