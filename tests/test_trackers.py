"""``train.report_to`` (issue 20): tiny runs write real TensorBoard event files and a real MLflow store, read back
here with TensorBoard's own reader and MLflow's client: the loss of every logged step, the dev metric of every
epoch, the final test metric, the run's options as parameters; each ensemble member a tracker run of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fmkit

from test_events import STEPS_PER_EPOCH, options


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard run in ``directory``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def logged(run_dir: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def runs_in(tracking_uri: str) -> dict[str, tuple]:
    """The MLflow runs in the store at ``tracking_uri``: run name -> (run, client)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: (run, client) for run in client.search_runs(experiments)}


@pytest.fixture(scope="module")
def tracked(tiny_model, ner_files, tmp_path_factory):
    """One model, two epochs, logged to TensorBoard and to MLflow's store under the run directory."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        yield fmkit.run(**options(tiny_model, ner_files, tmp_path_factory.mktemp("runs"), "tracked", epochs=2,
                                  report_to=["tensorboard", "mlflow"]))
    finally:
        mp.undo()


def test_tensorboard_event_files_hold_every_step_loss_and_the_metrics(tracked):
    run_dir = tracked.directory
    found = scalars(run_dir / "trackers" / "tracked")
    steps = logged(run_dir, "step")
    assert [s for s, _ in found["step/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [round(v, 5) for _, v in found["step/loss"]] == pytest.approx([r["loss"] for r in steps], abs=1e-5)
    assert [s for s, _ in found["step/lr"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    epochs = logged(run_dir, "epoch")
    assert [(s, round(v, 5)) for s, v in found["epoch_end/dev/f1"]] == [
        (STEPS_PER_EPOCH * r["epoch"], round(r["f1"], 5)) for r in epochs]
    assert found["assess_end/test/f1"] == [(2 * STEPS_PER_EPOCH, pytest.approx(tracked.metrics["test"]["f1"]))]


def test_mlflow_store_under_the_run_directory_holds_the_metrics_and_options(tracked):
    store = tracked.directory / "trackers" / "mlflow.db"
    assert store.is_file()
    runs = runs_in(f"sqlite:///{store}")
    assert list(runs) == ["tracked"]
    run, client = runs["tracked"]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "step/loss")
    assert sorted(m.step for m in history) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert run.data.metrics["assess_end/test/f1"] == pytest.approx(tracked.metrics["test"]["f1"])
    assert run.data.metrics["train_end/epochs_run"] == 2
    assert run.data.params["train.epochs"] == "2" and run.data.params["task"] == "ner"
    assert run.data.tags["fmkit.run"] == "tracked"
    import mlflow

    assert not mlflow.is_tracking_uri_set(), "the run's own store is not left as the process's tracking URI"


def test_ensemble_members_are_runs_of_their_own_in_the_store_the_user_named(tiny_model, ner_files, tmp_path,
                                                                              monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mine.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = fmkit.run(**options(tiny_model, ner_files, tmp_path / "runs", "ens", epochs=1,
                                 report_to="tensorboard,mlflow"), plugins="voting", voting={"members": 2})
    members = [r["name"] for r in logged(result.directory, "member")]
    assert len(members) == 2
    assert not (result.directory / "trackers" / "mlflow.db").exists(), "MLFLOW_TRACKING_URI wins"
    runs = runs_in(uri)
    assert set(runs) == {"ens", *(f"ens/{m}" for m in members)}
    for member in members:
        run, client = runs[f"ens/{member}"]
        assert run.data.tags["fmkit.member"] == member and run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "step/loss")) == STEPS_PER_EPOCH
        assert "assess_end/test/f1" not in run.data.metrics
        assert [s for s, _ in scalars(result.directory / "trackers" / "ens" / member)["step/loss"]] == list(
            range(1, STEPS_PER_EPOCH + 1))
    combined, _ = runs["ens"]
    assert combined.data.metrics["assess_end/test/f1"] == pytest.approx(result.metrics["test"]["f1"])


def test_a_failed_run_ends_its_mlflow_run_as_failed(tiny_model, ner_files, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'failed.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    class Crash:
        @fmkit.hookimpl
        def fmkit_event(self, run, event):
            if event.name == "epoch_end":
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fmkit.run(**options(tiny_model, ner_files, tmp_path / "runs", "failed", epochs=2, report_to="mlflow"),
                  callbacks=[Crash()])
    run, _ = runs_in(uri)["failed"]
    assert run.info.status == "FAILED"
    import mlflow

    assert mlflow.active_run() is None, "no run is left active for the next one"
