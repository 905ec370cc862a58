"""``fmkit compare`` (issue 20, item 2) on two tiny runs: the leaderboard's order and best mark, the paired
bootstrap (exactly zero for the best run against itself; the fast per-example counts equal fmkit's own
metric on every resample), the options that differ, the md/csv/json formats, sweep folders, test sets
that differ, and bad input as one line."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmkit.cli import main
from fmkit.compare import EntityF1, LabelMetric, leaderboard, paired_bootstrap
from fmkit.errors import FmkitError
from fmkit.testing import data_flags, set_flags


@pytest.fixture(scope="module")
def sweep(tiny_model, ner_files, tmp_path_factory) -> Path:
    """A folder of two runs of the same data: ``good`` learns the task, ``weak`` (a low rate, 2 epochs) barely."""
    root = tmp_path_factory.mktemp("sweep")
    common = ["run", "--task", "ner", *data_flags(ner_files), "--model", str(tiny_model), "--runs-dir", str(root)]
    assert main([*common, "--name", "good", *set_flags()]) == 0
    assert main([*common, "--name", "weak", *set_flags("train.lr=1e-5", "train.epochs=2")]) == 0
    return root


def test_runs_save_test_predictions_that_reproduce_the_test_metric_and_the_peak_memory(sweep):
    run = sweep / "good"
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and set(rows[0]) == {"gold", "pred"}
    gold, predicted = [r["gold"] for r in rows], [r["pred"] for r in rows]
    metric = EntityF1("IOB2")
    assert metric(gold, predicted) == metrics["test"]["f1"], "fmkit's own metric on the saved predictions"
    assert float(metric.value(metric.statistics(gold, predicted).sum(axis=0))) == pytest.approx(metrics["test"]["f1"])
    assert metrics["peak_memory_mb"] > 10
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "config.json", "log.jsonl", "metrics.json", "model",
                                                     "predictions", "report.html", "report.txt"]


def test_leaderboard_sorts_by_dev_marks_the_best_and_gives_it_a_zero_interval(sweep):
    board = leaderboard([sweep])
    assert [r.name for r in board.rows] == ["good", "weak"]
    best, weak = board.rows
    assert best.dev > weak.dev and best.best and best.mark == "*" and not weak.best
    assert (best.difference, best.low, best.high) == (0.0, 0.0, 0.0) and best.includes_zero is True
    assert weak.difference == pytest.approx(weak.test - best.test) and weak.difference < 0
    assert weak.low <= weak.high and weak.mark in ("", "~") and weak.includes_zero == (weak.low <= 0 <= weak.high)
    assert board.options == ["train.epochs", "train.lr"], "only the options that differ"
    assert best.options == {"train.epochs": 8, "train.lr": 3e-3} and weak.options == {"train.epochs": 2, "train.lr": 1e-5}
    assert best.plugins == ["hf", "full"] and best.trainable_params > 0 and best.seconds > 0
    assert best.peak_memory_mb > 0 and best.note == "" and board.metric == "f1"
    again = leaderboard([sweep / "weak", sweep / "good", sweep])
    assert [r.name for r in again.rows] == ["good", "weak"], "each run once, whatever the order given"
    assert (again.rows[1].low, again.rows[1].high) == (weak.low, weak.high), "a fixed seed: the same interval"


def test_paired_bootstrap_counts_equal_fmkit_metrics_on_every_resample(sweep):
    rows = [json.loads(line) for line in (sweep / "good" / "predictions" / "test.jsonl").read_text().splitlines()]
    weak = [json.loads(line)["pred"] for line in (sweep / "weak" / "predictions" / "test.jsonl").read_text().splitlines()]
    gold, good = [r["gold"] for r in rows], [r["pred"] for r in rows]
    metric = EntityF1("IOB2")
    fast = paired_bootstrap(gold, weak, good, metric, resamples=30, seed=3)
    slow = paired_bootstrap(gold, weak, good, lambda g, p: metric(g, p), resamples=30, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert paired_bootstrap(gold, good, good, metric) == (0.0, 0.0, 0.0)

    rng = random.Random(0)
    labels = ["pos", "neg", "mixed"]
    gold = [rng.choice(labels) for _ in range(60)]
    a = [g if rng.random() < 0.7 else rng.choice(labels) for g in gold]
    b = [g if rng.random() < 0.5 else rng.choice(labels) for g in gold]
    for name in ("accuracy", "macro_f1"):
        label_metric = LabelMetric(tuple(labels), name)
        fast = paired_bootstrap(gold, a, b, label_metric, resamples=40, seed=1)
        slow = paired_bootstrap(gold, a, b, lambda g, p, m=label_metric: m(g, p), resamples=40, seed=1)
        assert fast == pytest.approx(slow, abs=1e-12), name
    with pytest.raises(ValueError, match="not the same examples"):
        paired_bootstrap(gold, a[:-1], b, LabelMetric(tuple(labels)))


def parse_markdown(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    assert set(lines[1]) <= set("|-:"), "the separator line"
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_formats_md_csv_json_and_text(sweep, capsys, tmp_path):
    assert main(["compare", str(sweep), "--format", "md"]) == 0
    table = parse_markdown(capsys.readouterr().out)
    assert [row["run"] for row in table] == ["good", "weak"] and table[0][""] == "*"
    assert table[0]["test - best [95% CI]"] == "+0.0000 [+0.0000, +0.0000]"
    assert {"train.lr", "train.epochs", "dev f1", "test f1", "time s", "trainable", "peak MiB"} <= set(table[0])
    assert not {"train.batch_size", "seed", "model", "data.test"} & set(table[0]), "equal options are not shown"

    assert main(["compare", str(sweep), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in rows] == ["good", "weak"] and rows[0]["mark"] == "*" and rows[1]["train.lr"] == "1e-05"

    assert main(["compare", str(sweep / "weak"), str(sweep / "good"), "--format", "json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in board["runs"]] == ["good", "weak"] and board["metric"] == "f1"
    best = board["runs"][0]
    assert best["mark"] == "*" and best["includes_zero"] is True and best["low"] == best["high"] == 0.0
    assert board["options"] == ["train.epochs", "train.lr"]

    assert main(["compare", str(sweep)]) == 0  # not a terminal: aligned text
    text = capsys.readouterr().out
    assert text.splitlines()[1].startswith("*  good") and "paired bootstrap, 1000 resamples" in text

    out = tmp_path / "board.md"
    assert main(["compare", str(sweep), "--format", "md", "--output", str(out)]) == 0
    assert parse_markdown(out.read_text())[0]["run"] == "good"
    capsys.readouterr()
    assert main(["compare", str(sweep), "--format", "md", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", str(sweep), "--format", "md", "--output", str(out), "--overwrite"]) == 0


def test_a_sweep_folder_expands_at_any_depth_and_another_test_set_gets_no_interval(sweep, tmp_path):
    nested = tmp_path / "sweep" / "cells" / "seed-7"
    shutil.copytree(sweep / "good", nested / "fewer")
    shutil.copytree(sweep / "weak", tmp_path / "sweep" / "weak")
    shutil.copytree(sweep / "good", tmp_path / "sweep" / ".half.partial")  # an interrupted run: not a run
    predictions = nested / "fewer" / "predictions" / "test.jsonl"
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:-1]))
    metrics = json.loads((nested / "fewer" / "metrics.json").read_text())
    metrics["dev"]["f1"] -= 0.001  # below `good`, above `weak`
    (nested / "fewer" / "metrics.json").write_text(json.dumps(metrics))
    near = tmp_path / "sweep" / "cells" / "near"  # one test sentence predicted worse than `good` does
    shutil.copytree(sweep / "good", near)
    rows = [json.loads(line) for line in (near / "predictions" / "test.jsonl").read_text().splitlines()]
    changed = next(i for i, row in enumerate(rows) if set(row["gold"]) != {"O"})
    rows[changed]["pred"] = ["O"] * len(rows[changed]["gold"])
    (near / "predictions" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    metrics = json.loads((near / "metrics.json").read_text())
    metrics["dev"]["f1"] -= 0.002
    metrics["test"]["f1"] = EntityF1()([r["gold"] for r in rows], [r["pred"] for r in rows])
    (near / "metrics.json").write_text(json.dumps(metrics))

    board = leaderboard([tmp_path / "sweep", sweep / "good"])
    assert [Path(r.path).name for r in board.rows] == ["good", "fewer", "near", "weak"], "no hidden folder, each run once"
    assert board.rows[1].name.endswith(str(Path("sweep", "cells", "seed-7", "fewer"))), "named by its path in the sweep"
    fewer, near, weak = board.rows[1:]
    assert fewer.low is None and fewer.difference is None and "test set differs" in fewer.note and "39 vs 40" in fewer.note
    assert near.difference < 0 and near.low < 0 and near.high == 0.0 and near.includes_zero and near.mark == "~", \
        "one sentence of 40: not shown to differ"
    assert weak.low is not None and weak.high < 0 and weak.mark == "", "the same test set still gets its interval"
    assert any("other examples" in note for note in board.notes)


def test_runs_of_different_tasks_and_bad_paths_are_one_line_errors(sweep, tmp_path, capsys):
    other = tmp_path / "classify"
    shutil.copytree(sweep / "weak", other)
    record = json.loads((other / "config.json").read_text())
    record["task"]["kind"] = "classify"
    (other / "config.json").write_text(json.dumps(record))
    metrics = json.loads((other / "metrics.json").read_text())
    metrics.update(task="classify", primary_metric="accuracy")
    (other / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(FmkitError, match="runs of different tasks"):
        leaderboard([sweep, other])

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(sweep / "good", incomplete)
    (incomplete / "metrics.json").unlink()
    for path, message in ((tmp_path / "missing", "no such run directory"), (tmp_path / "empty", "holds no runs"),
                          (tmp_path / "file.txt", "not a run directory"), (incomplete, "incomplete run"),
                          (other, "runs of different tasks")):
        args = ["compare", str(sweep), str(path)]
        assert main(args) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fmkit: error: ") and message in lines[0], captured.err
        assert captured.out == ""
        if path != other:
            assert lines[0].startswith(f"fmkit: error: {path}: ")


def test_compare_imports_no_torch(sweep):
    code = ("import sys; from fmkit.cli import main; code = main(['compare', sys.argv[1], '--format', 'json']); "
            "assert code == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    done = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
