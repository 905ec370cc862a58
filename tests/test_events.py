"""The ``fmkit_event`` hook (issue 20): a callback passed to ``fmkit.run`` hears a tiny run's events in order
with their numbers, and stops a member's training with StopTraining (at an epoch's end, or mid-epoch), as
patience does; ``train.report_to`` refuses an unknown or missing tracker in one line, before any training."""

from __future__ import annotations

import json

import pytest

import fmkit
from fmkit.cli import main
from fmkit.plugin import Event, StopTraining
from fmkit.testing import fast_train_options

STEPS_PER_EPOCH = 15  # 240 training sentences in batches of 16


def options(tiny_model, ner_files, runs, name: str, **train) -> dict:
    """A tiny NER run's options, as fmkit.run takes them (FAST_TRAIN as nested keys, ``train`` added)."""
    return {"task": "ner", "model": str(tiny_model), "data": {k: str(v) for k, v in ner_files.items()},
            "train": {**fast_train_options(), **train}, "runs_dir": str(runs), "name": name}


class Recorder:
    """Keeps every event; raises StopTraining at the first event for which ``stop_at(event)`` is true."""

    def __init__(self, stop_at=lambda event: False):
        self.events: list[Event] = []
        self.stop_at = stop_at

    @fmkit.hookimpl
    def fmkit_event(self, run, event):
        self.events.append(event)
        if self.stop_at(event):
            raise StopTraining

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


@pytest.fixture(scope="module")
def recorded(tiny_model, ner_files, tmp_path_factory):
    recorder = Recorder()
    result = fmkit.run(**options(tiny_model, ner_files, tmp_path_factory.mktemp("runs"), "events", epochs=2),
                       callbacks=[recorder])
    return recorder, result


def test_events_arrive_in_order_with_their_numbers(recorded):
    recorder, result = recorded
    names = [e.name for e in recorder.events]
    step = ["step"] * STEPS_PER_EPOCH
    assert names == ["train_begin", *step, "epoch_end", *step, "epoch_end", "train_end", "assess_end"]
    assert [e.step for e in recorder.named("step")] == list(range(1, 2 * STEPS_PER_EPOCH + 1)), "global steps"
    assert [e.epoch for e in recorder.named("step")] == [1] * STEPS_PER_EPOCH + [2] * STEPS_PER_EPOCH
    assert all(e.member is None for e in recorder.events), "a single model has no member name"
    logged = [json.loads(line) for line in (result.directory / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["event"] == "step"]
    first = recorder.named("step")[0]
    assert set(first.values) == {"loss", "lr"} and first.values["lr"] > 0
    assert [round(e.values["loss"], 5) for e in recorder.named("step")] == losses, "the log's losses, step by step"
    ends = recorder.named("epoch_end")
    assert [(e.epoch, e.step) for e in ends] == [(1, STEPS_PER_EPOCH), (2, 2 * STEPS_PER_EPOCH)]
    epochs = [r for r in logged if r["event"] == "epoch"]
    assert [e.values["dev/f1"] for e in ends] == [r["f1"] for r in epochs]
    assert all(isinstance(v, float) for e in recorder.events for v in e.values.values()), "numbers only"
    done = recorder.named("train_end")[0]
    assert done.values["epochs_run"] == 2 and done.values["best_epoch"] in (1, 2)
    final = recorder.named("assess_end")[0]
    assert final.values["test/f1"] == result.metrics["test"]["f1"]
    assert final.values["dev/f1"] == result.metrics["dev"]["f1"] and final.values["seconds"] > 0
    assert (final.member, final.epoch, final.step) == (None, None, None)


def test_stop_training_at_the_end_of_epoch_1_keeps_its_weights_and_writes_the_run(tiny_model, ner_files, tmp_path):
    recorder = Recorder(stop_at=lambda e: e.name == "epoch_end" and e.epoch == 1)
    result = fmkit.run(**options(tiny_model, ner_files, tmp_path, "stopped", epochs=4), callbacks=[recorder])
    assert [e.epoch for e in recorder.named("epoch_end")] == [1]
    assert len(recorder.named("step")) == STEPS_PER_EPOCH
    member = [json.loads(line) for line in (result.directory / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "member"][0]
    assert member["epochs_run"] == 1 and member["best_epoch"] == 1
    saved = json.loads((result.directory / "metrics.json").read_text())
    assert saved["test"]["f1"] == result.metrics["test"]["f1"] and saved["dev"]["f1"] == member["dev"]["f1"]
    assert recorder.named("assess_end"), "the run is assessed after the stop"


def test_stop_training_mid_epoch_scores_that_epoch_and_ends(tiny_model, ner_files, tmp_path):
    recorder = Recorder(stop_at=lambda e: e.name == "step" and e.step == 5)
    result = fmkit.run(**options(tiny_model, ner_files, tmp_path, "mid-epoch", epochs=3), callbacks=[recorder])
    assert [e.step for e in recorder.named("step")] == [1, 2, 3, 4, 5]
    assert [(e.epoch, e.step) for e in recorder.named("epoch_end")] == [(1, 5)], "the partial epoch is scored"
    assert recorder.named("train_end")[0].values["epochs_run"] == 1
    assert (result.directory / "model" / "config.json").is_file() and "f1" in result.metrics["test"]


def test_an_ensemble_names_each_member_in_its_events(tiny_model, ner_files, tmp_path):
    recorder = Recorder()
    fmkit.run(**options(tiny_model, ner_files, tmp_path, "members", epochs=1), plugins="voting",
              voting={"members": 2}, callbacks=[recorder])
    begun = [e.member for e in recorder.named("train_begin")]
    assert len(begun) == 2 and len(set(begun)) == 2 and None not in begun
    for member in begun:
        own = [e.name for e in recorder.events if e.member == member]
        assert own[0] == "train_begin" and own[-1] == "train_end" and "epoch_end" in own
    assert recorder.events[-1].name == "assess_end" and recorder.events[-1].member is None


def test_report_to_refuses_an_unknown_tracker_in_one_line(tiny_model, ner_files, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_model), "--train", str(ner_files["train"]), "--runs-dir", str(tmp_path),
                 "--set", "train.report_to=tensorbord", "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert "train.report_to" in err and "unknown tracker 'tensorbord'" in err and "did you mean 'tensorboard'" in err


def test_report_to_names_the_pip_install_of_a_missing_tracker_before_any_training(tiny_model, ner_files, tmp_path,
                                                                                    capsys, monkeypatch):
    import fmkit.trackers

    monkeypatch.setattr(fmkit.trackers, "_installed", lambda module: module != "wandb")
    code = main(["run", "--model", str(tiny_model), "--train", str(ner_files["train"]), "--runs-dir", str(tmp_path),
                 "--set", "train.report_to=tensorboard,wandb", "--name", "never"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert err.startswith("fmkit: error: train.report_to: wandb needs wandb") and "pip install wandb" in err
    assert not (tmp_path / "never").exists() and not list(tmp_path.iterdir()), "nothing was started"


def test_report_to_all_with_no_tracker_installed_says_what_to_install(monkeypatch):
    import fmkit.trackers

    monkeypatch.setattr(fmkit.trackers, "_installed", lambda module: False)
    with pytest.raises(fmkit.FmkitError, match=r"no experiment tracker is installed: pip install 'fmkit\[trackers\]'"):
        fmkit.trackers.check(["all"])
    monkeypatch.setattr(fmkit.trackers, "_installed", lambda module: module in ("tensorboard", "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(fmkit.FmkitError, match="mlflow needs sqlalchemy, alembic, which is not installed"):
        fmkit.trackers.check(["mlflow"])
    assert fmkit.trackers.check(["all"]) == ["tensorboard"], "mlflow without its store is not installed"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert fmkit.trackers.check(["all"]) == ["tensorboard", "mlflow"], "a tracking server needs no local store"
