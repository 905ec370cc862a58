"""``report.html``: a run (or a leaderboard of runs) as one self-contained page a person would rather look
at than read: training curves per member, per-type F1, a confusion matrix, clean vs attacked scores and a
fusion run's modality contributions.

Everything is drawn here as inline SVG from the run directory's own files (``config.json``,
``metrics.json``, ``log.jsonl``, ``predictions/test.jsonl``), so a report can be (re)written for any saved
run (``fmkit report RUN``) and the page needs no network, no library and no script to show. Its one small
script only records, on ``<html>``, how many plots drew (``data-plots``/``data-rendered``) and any page
error (``data-errors``): what the browser test reads."""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fmkit.compare import Leaderboard, SavedRun, legend, read_run, table_cells
from fmkit.errors import FmkitError

REPORT_FILE = "report.html"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")  # matplotlib's tab10, then tab20's light halves
MISSED, SPURIOUS = "missed", "spurious"
"""The confusion matrix's extra column (a gold entity no prediction has the span of) and row (a predicted
entity with no gold span)."""
MAX_POINTS = 400  # per drawn line: longer logs are averaged in buckets (also a light smoothing)
Point = tuple[float, float]


# ------------------------------------------------------------------------------------------------ plots

@dataclass
class Series:
    """One line of a line chart: ``points`` drawn, ``faint`` (the raw values under a smoothed line) behind
    them, ``markers`` on each point (with its value as a tooltip)."""

    name: str
    points: list[Point]
    color: str
    faint: list[Point] = field(default_factory=list)
    markers: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high], about ``count`` intervals."""
    if not high > low:
        low, high = (low - 0.5, high + 0.5) if low == 0 else (low - abs(low) * 0.1, high + abs(high) * 0.1)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start, end = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    return [start + i * step for i in range(round((end - start) / step) + 1)]


def _tick(value: float) -> str:
    return "0" if abs(value) < 1e-12 else f"{value:.3g}"


def _text(x: float, y: float, label: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(label)}</text>'


def _figure(title: str, svg: str, legend_items: Sequence[tuple[str, str]] = (), note: str = "") -> str:
    keys = "".join(f'<span><i style="background:{color}"></i>{html.escape(name)}</span>' for name, color in legend_items)
    return (f'<figure class="plot"><figcaption>{html.escape(title)}</figcaption>{svg}'
            + (f'<div class="legend">{keys}</div>' if keys else "")
            + (f'<p class="note">{html.escape(note)}</p>' if note else "") + "</figure>")


def line_chart(title: str, series: Sequence[Series], x_label: str, y_label: str, note: str = "",
               width: int = 560, height: int = 280) -> str:
    """A figure of lines on shared linear axes, with a legend of the series' names."""
    left, right, top, bottom = 64, 14, 12, 44
    every = [p for s in series for p in (*s.points, *s.faint)]
    xs, ys = [p[0] for p in every], [p[1] for p in every]
    x_ticks = nice_ticks(min(xs), max(xs)) if min(xs) < max(xs) else nice_ticks(min(xs) - 1, max(xs) + 1)
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(p: Point) -> tuple[float, float]:
        fx = (p[0] - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (p[1] - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * plot_w, top + (1 - fy) * plot_h

    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>']
    for value in x_ticks:
        x, _ = at((value, y_ticks[0]))
        parts += [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="grid"/>',
                  _text(x, top + plot_h + 16, _tick(value))]
    for value in y_ticks:
        _, y = at((x_ticks[0], value))
        parts += [f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>',
                  _text(left - 6, y + 4, _tick(value), "end")]
    parts += [_text(left + plot_w / 2, height - 6, x_label),
              _text(14, top + plot_h / 2, y_label, extra=f' transform="rotate(-90 14 {top + plot_h / 2:.1f})"')]

    def polyline(points: list[Point], color: str, css: str, name: str) -> str:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(at, points))
        return (f'<polyline class="mark {css}" points="{coords}" stroke="{color}">'
                f"<title>{html.escape(name)}</title></polyline>")

    for s in series:
        if len(s.faint) > 1:
            parts.append(polyline(s.faint, s.color, "faint", s.name))
        if len(s.points) > 1:
            parts.append(polyline(s.points, s.color, "line", s.name))
        if s.markers or len(s.points) == 1:
            for p in s.points:
                x, y = at(p)
                parts.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{s.color}"><title>'
                             f'{html.escape(s.name)}: {_tick(p[0])}, {p[1]:.4g}</title></circle>')
    svg = f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    return _figure(title, svg, _legend(series), note)


def _legend(series: Sequence[Series]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for s in series:
        seen.setdefault(s.name, s.color)
    return list(seen.items()) if len(seen) > 1 else []


def bar_chart(title: str, categories: Sequence[str], groups: Sequence[str], values: Sequence[Sequence[float | None]],
              x_label: str, tips: Sequence[Sequence[str]] | None = None, note: str = "", width: int = 560) -> str:
    """Horizontal grouped bars: one row of bars per category, one bar per group (``values[category][group]``;
    None: no bar), a legend of the groups, and ``tips`` as each bar's tooltip."""
    label_w = min(200, 16 + 6.6 * max(len(c) for c in categories))
    left, right, top, bottom = label_w, 44, 8, 40
    bar, gap = 13, 10
    row_h = bar * len(groups) + gap
    height = top + row_h * len(categories) + bottom
    numbers = [0.0, *(v for row in values for v in row if v is not None)]
    scores = all(0 <= v <= 1 for v in numbers)  # a metric or a share: the whole [0, 1] scale
    ticks = nice_ticks(min(numbers), 1.0 if scores else max(numbers))
    plot_w = width - left - right
    at = lambda v: left + (v - ticks[0]) / (ticks[-1] - ticks[0]) * plot_w  # noqa: E731
    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{row_h * len(categories)}" class="frame"/>']
    for value in ticks:
        parts += [f'<line x1="{at(value):.1f}" x2="{at(value):.1f}" y1="{top}" y2="{height - bottom}" class="grid"/>',
                  _text(at(value), height - bottom + 16, _tick(value))]
    parts.append(_text(left + plot_w / 2, height - 6, x_label))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(groups))]
    for row, category in enumerate(categories):
        y0 = top + row * row_h + gap / 2
        parts.append(_text(left - 6, y0 + bar * len(groups) / 2 + 4, category, "end"))
        for g, group in enumerate(groups):
            value = values[row][g]
            if value is None:
                continue
            x0, x1 = sorted((at(0.0), at(value)))
            tip = f"{category} · {group}: {value:.4f}" + (f" ({tips[row][g]})" if tips and tips[row][g] else "")
            parts.append(f'<rect class="mark" x="{x0:.1f}" y="{y0 + g * bar:.1f}" width="{max(x1 - x0, 0.8):.1f}" '
                         f'height="{bar - 2}" fill="{colors[g]}"><title>{html.escape(tip)}</title></rect>')
            parts.append(_text(x1 + 3, y0 + g * bar + bar - 4, f"{value:.2f}", "start", ' class="value"'))
    svg = f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    return _figure(title, svg, list(zip(groups, colors)) if len(groups) > 1 else [], note)


def heatmap(title: str, rows: Sequence[str], columns: Sequence[str], counts: Sequence[Sequence[int]],
            row_label: str = "gold", column_label: str = "predicted", note: str = "") -> str:
    """A matrix of counts, darker for more; cells where the row and column name agree are outlined."""
    cell = max(22, min(40, 480 // max(len(columns), 1)))
    left = min(180, 30 + 6.6 * max(len(r) for r in rows))
    slant = 4.7 * max(len(c) for c in columns)  # a label's reach up and right, rotated 45 degrees
    top = 30 + slant
    width, height = int(left + cell * (len(columns) - 0.5) + max(slant, cell / 2) + 12), int(top + cell * len(rows) + 12)
    largest = max((c for row in counts for c in row), default=0) or 1
    parts = [_text(left + cell * len(columns) / 2, 14, column_label),
             _text(12, top + cell * len(rows) / 2, row_label,
                   extra=f' transform="rotate(-90 12 {top + cell * len(rows) / 2:.1f})"')]
    for j, name in enumerate(columns):
        x = left + (j + 0.5) * cell
        parts.append(_text(x, top - 6, name, "start", f' transform="rotate(-45 {x:.1f} {top - 6:.1f})"'))
    outlines = []
    for i, name in enumerate(rows):
        parts.append(_text(left - 6, top + (i + 0.5) * cell + 4, name, "end"))
        for j, count in enumerate(counts[i]):
            share = math.sqrt(count / largest)
            x, y = left + j * cell, top + i * cell
            tip = f"{row_label} {name}, {column_label} {columns[j]}: {count}"
            parts.append(f'<rect class="mark" x="{x}" y="{y}" width="{cell}" height="{cell}" stroke="#fff" '
                         f'fill="{_blend("#f7fbff", "#08519c", share)}"><title>{html.escape(tip)}</title></rect>')
            if count:
                parts.append(_text(x + cell / 2, y + cell / 2 + 4, str(count),
                                   extra=' class="count on-dark"' if share > 0.6 else ' class="count"'))
            if name == columns[j]:
                outlines.append(f'<rect class="outline" x="{x}" y="{y}" width="{cell}" height="{cell}"/>')
    parts += outlines  # over every cell, so no neighbour covers them
    svg = f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    return _figure(title, svg, note=note)


def _blend(start: str, end: str, share: float) -> str:
    a, b = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (start, end))
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- what is plotted

@dataclass
class Curves:
    """One member's training record, x in epochs (a step at its fraction of its epoch): the loss and learning
    rate per step, the dev metric per epoch."""

    loss: list[Point] = field(default_factory=list)
    lr: list[Point] = field(default_factory=list)
    dev: list[Point] = field(default_factory=list)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` (none when the run has no log)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError as exc:
        raise FmkitError(f"{path}: unreadable ({exc})") from None


def training_curves(log: Sequence[dict[str, Any]], metric: str) -> dict[str, Curves]:
    """Per member (in the order they trained; ``model`` for a run of one), from the ``step`` and ``epoch``
    records that ``fmkit.train`` writes."""
    number = lambda value: isinstance(value, (int, float)) and math.isfinite(value)  # noqa: E731
    is_step = [r.get("event") == "step" and number(r.get("epoch")) and number(r.get("step")) for r in log]
    per_epoch: Counter = Counter()
    for r, step in zip(log, is_step):
        if step:
            key = (r.get("member"), r["epoch"])
            per_epoch[key] = max(per_epoch[key], r["step"])
    curves: dict[str, Curves] = {}
    for r, step in zip(log, is_step):
        member = r.get("member") or "model"
        if step:
            x = r["epoch"] - 1 + r["step"] / per_epoch[r.get("member"), r["epoch"]]
            for name in ("loss", "lr"):
                if number(r.get(name)):
                    getattr(curves.setdefault(member, Curves()), name).append((x, float(r[name])))
        elif r.get("event") == "epoch" and number(r.get("epoch")) and number(r.get(metric)):
            curves.setdefault(member, Curves()).dev.append((float(r["epoch"]), float(r[metric])))
    return curves


def thin(points: list[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most ``limit`` points: the means of consecutive buckets."""
    if len(points) <= limit:
        return points
    size = len(points) / limit
    buckets = [points[int(i * size):int((i + 1) * size)] for i in range(limit)]
    return [(sum(p[0] for p in b) / len(b), sum(p[1] for p in b) / len(b)) for b in buckets if b]


def smooth(points: list[Point]) -> list[Point]:
    """An exponential moving average over about a twentieth of the steps: the trend of a noisy loss."""
    alpha, out, level = min(1.0, 20 / max(len(points), 1)), [], None
    for x, y in points:
        level = y if level is None else level + alpha * (y - level)
        out.append((x, level))
    return out


def confusion(task: dict[str, Any], gold: list, predicted: list) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows (gold), columns (predicted) and counts. Classify: labels. NER: entity types, matched by exact
    span (seqeval's strict entities, as the metric), with a ``missed`` column for gold entities no prediction
    has the span of and a ``spurious`` row for predicted entities whose span is no gold entity's."""
    pairs: Counter = Counter()
    if task.get("kind") == "ner":
        from seqeval.scheme import IOB2, IOBES, Entities

        scheme = IOBES if task.get("scheme") == "IOBES" else IOB2
        true = Entities([list(g) for g in gold], scheme).entities
        found = Entities([list(p) for p in predicted], scheme).entities
        for t, p in zip(true, found):
            gold_spans = {(e.start, e.end): e.tag for e in t}
            predicted_spans = {(e.start, e.end): e.tag for e in p}
            pairs.update((tag, predicted_spans.get(span, MISSED)) for span, tag in gold_spans.items())
            pairs.update((SPURIOUS, tag) for span, tag in predicted_spans.items() if span not in gold_spans)
        types = sorted({name for pair in pairs for name in pair} - {MISSED, SPURIOUS})
        rows, columns = [*types, SPURIOUS], [*types, MISSED]
    else:
        pairs.update(zip(map(str, gold), map(str, predicted)))
        known = [str(label) for label in task.get("labels", ())]
        rows = columns = known + sorted({name for pair in pairs for name in pair} - set(known))
    return rows, columns, [[pairs[r, c] for c in columns] for r in rows]


def per_type(run: SavedRun, split: str) -> dict[str, dict[str, float]] | None:
    """A split's per-type scores: metrics.json's, or for the test split of a run saved before they were
    recorded, computed from its saved predictions."""
    saved = (run.metrics.get(split) or {}).get("per_type")
    if saved is not None or split != "test":
        return saved
    predictions = run.predictions()
    if predictions is None:
        return None
    from fmkit.evaluate import per_type_scores
    from fmkit.types import Task

    task = run.task
    return per_type_scores(Task(task.get("kind", "ner"), list(task.get("labels", [])), task.get("scheme")), *predictions)


def _run_name(run: SavedRun) -> str:
    return str(run.record.get("run") or run.path.name)


def _splits(metrics: dict[str, Any]) -> list[str]:
    return [s for s in ("dev", "test") if isinstance(metrics.get(s), dict)]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def curve_figures(runs: Sequence[SavedRun], logs: Sequence[list[dict[str, Any]]]) -> list[str]:
    """Loss, learning rate and dev metric per epoch: one colour per member (one run), or per run (several,
    its members alike)."""
    lines: dict[str, list[Series]] = {"loss": [], "lr": [], "dev": []}
    for r, (run, log) in enumerate(zip(runs, logs)):
        members = training_curves(log, run.metric)
        for m, (member, curves) in enumerate(members.items()):
            color = _color(m) if len(runs) == 1 else _color(r)
            name = member if len(runs) == 1 else _run_name(run)
            if curves.loss:
                lines["loss"].append(Series(name, thin(smooth(curves.loss)), color, faint=thin(curves.loss)))
            if curves.lr:
                lines["lr"].append(Series(name, thin(curves.lr), color))
            if curves.dev:
                lines["dev"].append(Series(name, curves.dev, color, markers=True))
    metric = runs[0].metric
    titles = {"loss": ("training loss", "loss", "faint: per step; solid: moving average"),
              "lr": ("learning rate", "learning rate", ""),
              "dev": (f"dev {metric} per epoch", f"dev {metric}", "the best epoch's weights are kept")}
    return [line_chart(titles[k][0], lines[k], "epoch", titles[k][1], titles[k][2]) for k in lines if lines[k]]


def per_type_figure(runs: Sequence[SavedRun], title: str) -> str | None:
    """F1 per entity type or label: dev and test bars (one run), or test bars per run (several)."""
    if len(runs) == 1:
        tables = {split: per_type(runs[0], split) for split in _splits(runs[0].metrics)}
    else:
        tables = {_run_name(run): per_type(run, "test") or per_type(run, "dev") for run in runs}
    tables = {name: table for name, table in tables.items() if table}
    if not tables:
        return None
    support: Counter = Counter()
    for table in tables.values():
        support.update({t: scores["support"] for t, scores in table.items()})
    types = sorted(support, key=lambda t: (-support[t], t))
    groups = list(tables)
    values = [[tables[g][t]["f1"] if t in tables[g] else None for g in groups] for t in types]
    tips = [[(f"precision {tables[g][t]['precision']:.3f}, recall {tables[g][t]['recall']:.3f}, "
              f"support {tables[g][t]['support']}") if t in tables[g] else "" for g in groups] for t in types]
    return bar_chart(title, types, groups, values, "F1", tips, note="sorted by support; hover a bar for P, R, support")


def robust_figure(runs: Sequence[SavedRun]) -> str | None:
    """The primary metric clean and under each attack: per split of the combination (or, for an ensemble
    attacked member by member, per member) for one run; on test per run for several."""
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # label, clean metrics, {attack: metrics}
    for run in runs:
        metrics = run.metrics
        targets = ([(None, metrics)] if metrics.get("robust")
                   else [(name, entry) for name, entry in (metrics.get("members") or {}).items() if entry.get("robust")])
        for member, entry in targets:
            for split in _splits(entry):
                attacked = {a: by_split[split] for a, by_split in entry["robust"].items() if split in by_split}
                if not attacked or (len(runs) > 1 and split != "test" and "test" in entry):
                    continue
                label = " · ".join(x for x in (_run_name(run) if len(runs) > 1 else "", member or "", split) if x)
                rows.append((label, entry[split], attacked))
    if not rows:
        return None
    metric = runs[0].metric
    attacks = sorted({a for _, _, attacked in rows for a in attacked})
    groups = ["clean", *attacks]
    values = [[clean.get(metric), *(attacked.get(a, {}).get(metric) for a in attacks)] for _, clean, attacked in rows]
    tips = [["", *(f"attack success rate {attacked[a]['attack_success_rate']:.3f}"
                   if "attack_success_rate" in attacked.get(a, {}) else "" for a in attacks)] for _, _, attacked in rows]
    return bar_chart(f"{metric}: clean vs attacked", [r[0] for r in rows], groups, values, metric, tips,
                     note="hover an attacked bar for the attack success rate (clean-right examples the attack flips)")


def fusion_figures(runs: Sequence[SavedRun]) -> list[str]:
    """A fusion run's modality contributions (``members.*.modalities``, see fmkit_fuse.report) and, when a
    harden plugin ran, its accuracy with each modality attacked."""
    reports = [(run, member, entry["modalities"]) for run in runs
               for member, entry in (run.metrics.get("members") or {}).items() if isinstance(entry.get("modalities"), dict)]
    if not reports:
        return []
    contributions: dict[str, dict[str, float]] = {}  # group -> modality -> mean contribution
    attacked: dict[str, dict[str, float]] = {}  # group -> "clean" / "text attacked" / ... -> accuracy
    for run, member, report in reports:
        for split in _splits(report):
            prefix = [_run_name(run)] if len(runs) > 1 else []
            group = " · ".join([*prefix, *([member] if len(reports) > len(runs) else []), split])
            contributions[group] = report[split].get("contribution") or {}
            for hardener, by_attack in (report[split].get("robust_accuracy") or {}).items():
                clean = ((run.metrics.get("members") or {}).get(member, {}).get(split) or {}).get("accuracy")
                attacked[f"{group} · {hardener}"] = {"clean": clean,
                                                     **{f"{a} attacked": v for a, v in by_attack.items()}}
    measure = next((report.get("measure") for _, _, report in reports if report.get("measure")), "")
    figures = []
    for title, table, x_label, note in (("modality contributions", contributions, "mean contribution", measure),
                                        ("accuracy with each modality attacked", attacked, "accuracy", "")):
        categories = list(dict.fromkeys(k for row in table.values() for k in row))
        if categories:
            groups = list(table)
            values = [[table[g].get(c) for g in groups] for c in categories]
            figures.append(bar_chart(title, categories, groups, values, x_label, note=note))
    return figures


def confusion_figure(run: SavedRun, title: str = "") -> str | None:
    predictions = run.predictions()
    if predictions is None or not predictions[0]:
        return None
    rows, columns, counts = confusion(run.task, *predictions)
    if not rows or not columns:
        return None
    ner = run.task.get("kind") == "ner"
    note = (f"test entities by exact span: {MISSED} = a gold entity with no predicted span; {SPURIOUS} = a "
            "predicted entity with no gold span; outlined = right type" if ner else "test examples; outlined = right")
    return heatmap(title or ("entity types, test" if ner else "labels, test"), rows, columns, counts, note=note)


# ------------------------------------------------------------------------------------------------ pages

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#f5f6f8}
header{background:#1d2733;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c9d3dd}main{padding:8px 28px 28px}h2{font-size:17px;margin:22px 0 8px}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure.plot{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:0;padding:10px 12px;max-width:100%}
figcaption{font-weight:600;margin-bottom:6px}svg{display:block;max-width:100%;height:auto;font-size:11px}
svg text{fill:#333}svg .value{fill:#555;font-size:10px}svg .count{font-size:11px}svg text.on-dark{fill:#fff}
.outline{fill:none;stroke:#333;stroke-width:1.5}
.frame{fill:none;stroke:#c8ccd1}.grid line,line.grid{stroke:#eceef1}
polyline{fill:none}polyline.line{stroke-width:2}polyline.faint{stroke-width:1;opacity:.25}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:6px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.note{color:#666;font-size:12px;margin:6px 0 0;max-width:560px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e6;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th{background:#f0f2f5}.text{text-align:left}tr.best td{font-weight:700}.scroll{overflow-x:auto;max-width:100%}
footer{color:#777;font-size:12px;padding:0 28px 20px}
"""

CHECK = """(function(){var root=document.documentElement,errors=0;
function fail(){errors++;root.dataset.errors=errors;}
window.addEventListener('error',fail,true);window.addEventListener('unhandledrejection',fail);
window.addEventListener('load',function(){var figures=document.querySelectorAll('figure.plot'),drawn=0;
figures.forEach(function(f){var marks=f.querySelectorAll('svg .mark'),ok=marks.length>0;
marks.forEach(function(m){var b=m.getBBox();if(!(b.width>0||b.height>0))ok=false;});
f.dataset.rendered=ok?'yes':'no';if(ok)drawn++;});
root.dataset.plots=figures.length;root.dataset.rendered=drawn;root.dataset.errors=errors;});})();"""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], best: Sequence[bool] = ()) -> str:
    """An HTML table: columns of numbers right-aligned, others left; rows marked ``best`` in bold."""
    text = [i for i in range(len(header)) if any(row[i] and not _numeric(row[i]) for row in rows)]
    align = lambda i: ' class="text"' if i in text else ""  # noqa: E731
    head = "".join(f"<th{align(i)}>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(f'<tr{" class=best" if i < len(best) and best[i] else ""}>'
                   + "".join(f"<td{align(j)}>{html.escape(c)}</td>" for j, c in enumerate(row)) + "</tr>"
                   for i, row in enumerate(rows))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _numeric(cell: str) -> bool:
    try:
        float(cell.split(" ")[0].replace(",", ""))
    except ValueError:
        return False
    return True


def page(title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str]]) -> str:
    import fmkit

    lines = "".join(f"<p>{html.escape(s)}</p>" for s in subtitle)
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections if content)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{CHECK}</script></head>"
            f"<body><header><h1>{html.escape(title)}</h1>{lines}</header><main>{body}</main>"
            f"<footer>written by fmkit {html.escape(fmkit.__version__)} from the run directory's files; "
            "self-contained: no network needed</footer></body></html>\n")


def _grid(figures: Sequence[str | None]) -> str:
    shown = [f for f in figures if f]
    return f'<div class="grid">{"".join(shown)}</div>' if shown else ""


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))


def _rounded(value: Any) -> Any:
    return round(value) if isinstance(value, float) else value


def scores_table(metrics: dict[str, Any]) -> str:
    """Clean scores per split, then under each attack with its success rate."""
    names = ["f1", "precision", "recall"] if metrics.get("task") == "ner" else ["accuracy", "macro_f1"]
    rows = [[split, *(_format(metrics[split].get(n)) for n in names), ""] for split in _splits(metrics)]
    for attack, by_split in (metrics.get("robust") or {}).items():
        rows += [[f"{split} under {attack}", *(_format(scored.get(n)) for n in names),
                  _format(scored.get("attack_success_rate"))] for split, scored in by_split.items()]
    attacked = any(row[-1] for row in rows)
    return table(["", *names, *(["attack success"] if attacked else [])], [r if attacked else r[:-1] for r in rows])


def members_table(metrics: dict[str, Any], log: Sequence[dict[str, Any]]) -> str:
    """Per member: its scores, best epoch, training time and trainable parameters."""
    members = metrics.get("members") or {}
    metric = metrics.get("primary_metric", "f1")
    best = {r.get("name"): r.get("best_epoch") for r in log if r.get("event") == "member"}
    splits = _splits(metrics)
    rows = [[name, *(_format((entry.get(s) or {}).get(metric)) for s in splits), _format(best.get(name)),
             _format(_rounded(entry.get("train_seconds"))), _format(entry.get("trainable_params"))]
            for name, entry in members.items()]
    return table(["member", *(f"{s} {metric}" for s in splits), "best epoch", "train s", "trainable"], rows)


def run_page(run_dir: Path) -> str:
    """The report of one saved run, from its files."""
    run, log = read_run(Path(run_dir)), read_log(Path(run_dir))
    metrics, name = run.metrics, _run_name(run)
    kind = run.task.get("kind") or metrics.get("task", "")
    types = "entity type" if kind == "ner" else "label"
    subtitle = [f"{kind} · plugins: {', '.join(run.plugins)} · seed {run.record.get('config', {}).get('seed', '')}"
                + (f" · {metrics['seconds']:.0f} s" if isinstance(metrics.get("seconds"), (int, float)) else ""),
                str(metrics.get("data", ""))]
    sections = [("Scores", scores_table(metrics)),
                ("Members", members_table(metrics, log) if len(metrics.get("members") or {}) > 1 else ""),
                ("Training", _grid(curve_figures([run], [log]))),
                (f"Per {types}", _grid([per_type_figure([run], f"F1 per {types}"), confusion_figure(run)])),
                ("Robustness", _grid([robust_figure([run])])),
                ("Fusion", _grid(fusion_figures([run])))]
    return page(f"fmkit run {name}", subtitle, sections)


def write_report(run_dir: Path) -> Path:
    """(Re)write ``run_dir/report.html`` from the run's files, atomically."""
    from fmkit import rundir

    path = Path(run_dir) / REPORT_FILE
    rundir.write_text(path, run_page(Path(run_dir)))
    return path


def leaderboard_page(board: Leaderboard) -> str:
    """``fmkit compare --html``: the leaderboard, then the runs' plots side by side (curves overlaid, per-type
    F1 and clean vs attacked bars grouped by run, each run's confusion matrix)."""
    runs = [read_run(Path(row.path)) for row in board.rows]
    logs = [read_log(run.path) for run in runs]
    for run, row in zip(runs, board.rows):
        run.record = {**run.record, "run": row.name}  # the leaderboard's names: unique, and short
    header, rows = table_cells(board)
    types = "entity type" if board.task == "ner" else "label"
    notes = "".join(f'<p class="note">{html.escape(line)}</p>' for line in legend(board))
    sections = [("Leaderboard", table(header, rows, [row.best for row in board.rows]) + notes),
                ("Training", _grid(curve_figures(runs, logs))),
                (f"Per {types}", _grid([per_type_figure(runs, f"test F1 per {types}")])),
                ("Robustness", _grid([robust_figure(runs)])),
                ("Fusion", _grid(fusion_figures(runs))),
                ("Confusion matrices", _grid([confusion_figure(run, row.name) for run, row in zip(runs, board.rows)]))]
    return page(f"fmkit compare: {len(runs)} runs", [f"{board.task}, sorted by dev {board.metric}"], sections)
