"""report.html (issue 20, item 4) and progress bars on evaluation (item 5): every run writes a self-contained
report whose plots draw in a real browser (headless Chromium) without a console message; per-type scores in
metrics.json agree with the confusion matrix; ``fmkit report`` rewrites it for a saved run; ``fmkit compare
--html`` draws the runs side by side; evaluation, attacked evaluation and prediction show a progress bar
on a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fmkit.cli import main
from fmkit.compare import SavedRun, read_run
from fmkit.report_html import MISSED, SPURIOUS, confusion, fusion_figures, training_curves
from fmkit.testing import data_flags, set_flags

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]
RUN_FIGURES = ["training loss", "learning rate", "dev f1 per epoch", "F1 per entity type", "entity types, test",
               "f1: clean vs attacked"]


@pytest.fixture(scope="module")
def runs(tiny_model, ner_files, tmp_path_factory) -> Path:
    """Two tiny NER runs: ``hardened`` (pgd: robust metrics) and ``plain`` (fewer epochs)."""
    root = tmp_path_factory.mktemp("report-runs")
    common = ["run", "--task", "ner", *data_flags(ner_files), "--model", str(tiny_model), "--runs-dir", str(root)]
    assert main([*common, "--name", "hardened", "--plugins", "pgd", *set_flags("train.epochs=3", "pgd.eval_steps=3")]) == 0
    assert main([*common, "--name", "plain", *set_flags("train.epochs=2")]) == 0
    return root


def figures(page: str) -> list[str]:
    return re.findall(r'<figure class="plot"><figcaption>([^<]*)</figcaption>', page)


def test_every_run_writes_a_self_contained_report_with_every_plot(runs):
    page = (runs / "hardened" / "report.html").read_text(encoding="utf-8")
    assert figures(page) == RUN_FIGURES
    assert page.count("<svg") == len(RUN_FIGURES) and page.count('class="mark') > 20
    links = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page)
    assert not [link for link in links if re.match(r"(https?:)?//", link)], "no external resource"
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script src" not in page and "<img" not in page
    assert "test under pgd" in page, "the scores table has the attacked row"
    plain = (runs / "plain" / "report.html").read_text(encoding="utf-8")
    assert figures(plain) == [f for f in RUN_FIGURES if "attacked" not in f], "no attack: no robustness plot"


def test_metrics_hold_per_type_scores_that_agree_with_the_confusion_matrix(runs):
    run = read_run(runs / "hardened")
    per_type = run.metrics["test"]["per_type"]
    assert set(per_type) == {"LOC", "PER"} and set(per_type["PER"]) == {"precision", "recall", "f1", "support"}
    rows, columns, counts = confusion(run.task, *run.predictions())
    assert rows == ["LOC", "PER", SPURIOUS] and columns == ["LOC", "PER", MISSED]
    for i, name in enumerate(["LOC", "PER"]):
        scores, right = per_type[name], counts[i][i]
        assert sum(counts[i]) == scores["support"] > 0, "each gold entity once in its row"
        assert right / sum(row[i] for row in counts) == pytest.approx(scores["precision"])
        assert right / scores["support"] == pytest.approx(scores["recall"])
    assert run.metrics["dev"]["per_type"]["PER"]["support"] > 0


def test_confusion_matches_entities_by_exact_span_and_counts_missed_and_spurious():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-LOC", "O"]]
    predicted = [["B-PER", "O", "O", "B-PER", "B-LOC"], ["B-LOC", "O"]]
    rows, columns, counts = confusion({"kind": "ner", "scheme": "IOB2"}, gold, predicted)
    cell = {(r, c): counts[i][j] for i, r in enumerate(rows) for j, c in enumerate(columns)}
    assert cell["PER", MISSED] == 1, "PER over two words predicted as one: another span"
    assert cell["LOC", "PER"] == 1 and cell["LOC", "LOC"] == 1
    assert cell[SPURIOUS, "PER"] == 1 and cell[SPURIOUS, "LOC"] == 1
    assert sum(map(sum, counts)) == 5
    labels, _, table = confusion({"kind": "classify", "labels": ["neg", "pos"]}, ["pos", "neg", "pos"],
                                 ["pos", "pos", "maybe"])
    assert labels == ["neg", "pos", "maybe"], "a label outside the task's still shows"
    assert table == [[0, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_curves_place_steps_within_their_epoch_per_member(runs):
    log = [json.loads(line) for line in (runs / "hardened" / "log.jsonl").read_text().splitlines()]
    [(member, curves)] = training_curves(log, "f1").items()
    assert member == "model" and [x for x, _ in curves.dev] == [1.0, 2.0, 3.0]
    xs = [x for x, _ in curves.loss]
    assert xs == sorted(xs) and 0 < xs[0] < 1 and xs[-1] == 3.0 and len(curves.lr) == len(curves.loss)
    members = training_curves([{"event": "step", "member": "m1", "epoch": 1, "step": s, "loss": 1.0, "lr": 0.1}
                               for s in (1, 2)] + [{"event": "epoch", "member": "m2", "epoch": 1, "f1": 0.5}], "f1")
    assert [x for x, _ in members["m1"].loss] == [0.5, 1.0] and members["m2"].dev == [(1.0, 0.5)]


def test_fusion_contributions_and_attacked_modalities_are_plotted():
    modalities = {"measure": "gate weight", "test": {"contribution": {"text": 0.7, "image": 0.3},
                                                      "robust_accuracy": {"pgd": {"text": 0.6, "image": 0.5}}}}
    run = SavedRun(Path("fused"), {"run": "fused", "task": {"kind": "multimodal"}},
                   {"task": "multimodal", "members": {"model": {"test": {"accuracy": 0.9}, "modalities": modalities}}})
    contributions, attacked = fusion_figures([run])
    assert "modality contributions" in contributions and ">text<" in contributions and ">image<" in contributions
    assert "gate weight" in contributions
    assert "text attacked" in attacked and "clean" in attacked and "0.90" in attacked


def test_fmkit_report_rewrites_a_saved_runs_report_identically(runs, tmp_path, capsys):
    copy = tmp_path / "hardened"
    shutil.copytree(runs / "hardened", copy, ignore=shutil.ignore_patterns("model"))
    original = (copy / "report.html").read_text(encoding="utf-8")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text(encoding="utf-8") == original
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_compare_html_draws_the_runs_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "board.html"
    assert main(["compare", str(runs), "--html", str(out), "--format", "md", "--resamples", "50"]) == 0
    page = out.read_text(encoding="utf-8")
    assert figures(page) == ["training loss", "learning rate", "dev f1 per epoch", "test F1 per entity type",
                             "f1: clean vs attacked", "hardened", "plain"]
    assert "<table>" in page and page.index("hardened") < page.index("plain")
    assert "http://" not in page and "https://" not in page
    assert main(["compare", str(runs), "--html", str(out)]) == 2, "an existing page needs --overwrite"
    assert "--html" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_evaluation_and_attacked_evaluation_show_a_progress_bar_on_a_terminal(runs, ner_files, monkeypatch):
    import fmkit

    predictor = fmkit.load(runs / "hardened", attack="pgd")
    run = predictor.loaded.run
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    predictor.evaluate(ner_files["test"])
    assert "%|" not in terminal.getvalue(), "train.progress=false (the run's setting): no bar"
    run.config = run.config.model_copy(update={"train": run.config.train.model_copy(update={"progress": True})})
    predictor.evaluate(ner_files["test"])
    shown = terminal.getvalue()
    assert re.search(r"eval: +\d+%\|.*/40 \[", shown) and re.search(r"eval under pgd: +\d+%\|.*/40 .*window", shown)
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    predictor.evaluate(ner_files["test"])
    assert "%|" not in piped.getvalue(), "not a terminal: no bar, as training's"


# ------------------------------------------------------------------------------------------ the browser

def chromium() -> str:
    """The Chromium binary; a clear failure when missing (CI installs it), a skip only when asked."""
    if os.environ.get("FMKIT_SKIP_BROWSER") == "1":
        pytest.skip("FMKIT_SKIP_BROWSER=1")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (as .ci/run does), "
                    "or set FMKIT_SKIP_BROWSER=1 to skip the browser test")
    return found


def open_in_browser(page: Path) -> tuple[str, str]:
    """The DOM after the page loaded (its scripts ran) and Chromium's log, from a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.mark.parametrize("which", ["run", "compare"])
def test_every_plot_renders_in_headless_chromium_without_a_console_message(runs, tmp_path, which):
    if which == "run":
        page, expected = runs / "hardened" / "report.html", len(RUN_FIGURES)
    else:
        page, expected = tmp_path / "board.html", 7
        assert main(["compare", str(runs), "--html", str(page), "--format", "csv", "--resamples", "20"]) == 0
    dom, log = open_in_browser(page)
    root = re.search(r"<html([^>]*)>", dom).group(1)
    attributes = dict(re.findall(r'data-([a-z]+)="([^"]*)"', root))
    assert attributes == {"plots": str(expected), "rendered": str(expected), "errors": "0"}, attributes
    assert dom.count('data-rendered="yes"') == expected and 'data-rendered="no"' not in dom
    assert not [line for line in log.splitlines() if ":CONSOLE" in line], "nothing on the console"
