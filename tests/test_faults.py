"""Fault injection on the tiny model: a run killed at a random step resumes to the very result of an
uninterrupted one; a NaN loss stops (resumably) or is skipped; a failing disk keeps the previous
checkpoint; truncated or foreign checkpoint and model files are one-line errors naming them."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmkit.checkpoint import RunCheckpoints
from fmkit.cli import main
from fmkit.testing import FAST_TRAIN, reproducible_metrics

QUICK = [*FAST_TRAIN, "train.epochs=3", "data.limit=96", "train.checkpoint_every=2"]  # 6 steps an epoch, 18 in all
STEPS = 18


def run_args(files: dict, model: Path, runs: Path, name: str, *extra: str) -> list[str]:
    args = ["run", "--train", files["train"], "--dev", files["dev"], "--test", files["test"], "--model", model,
            "--runs-dir", runs, "--name", name, "--seed", "5"]
    return [str(a) for a in args] + [x for s in (*QUICK, *extra) for x in ("--set", s)]


def outcome(run_dir: Path) -> tuple[dict, dict]:
    """What must not depend on interruptions: the metrics (less timings) and the trained weights."""
    from safetensors.torch import load_file

    return reproducible_metrics(run_dir), load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_outcome(run_dir: Path, reference: Path) -> None:
    metrics, weights = outcome(run_dir)
    ref_metrics, ref_weights = outcome(reference)
    assert metrics == ref_metrics
    assert weights.keys() == ref_weights.keys()
    assert all(bool((weights[k] == ref_weights[k]).all()) for k in weights), "weights differ from the uninterrupted run"


def one_line_error(capsys) -> str:
    """The error: the one last line of stderr (progress lines come before it), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fmkit: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def reference(tiny_model, ner_files, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must reproduce."""
    runs = tmp_path_factory.mktemp("reference")
    assert main(run_args(ner_files, tiny_model, runs, "ref")) == 0
    return runs / "ref"


@pytest.fixture(scope="module")
def stopped(tiny_model, ner_files, tmp_path_factory) -> Path:
    """A run stopped by a NaN loss at step 5 (its last checkpoint: step 4), as the user finds it."""
    import fmkit.train

    runs = tmp_path_factory.mktemp("stopped")
    calls = {"n": 0}
    task_loss = fmkit.train.task_loss

    def poisoned(logits, batch):
        calls["n"] += 1
        return task_loss(logits, batch) * (float("nan") if calls["n"] == 5 else 1.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fmkit.train, "task_loss", poisoned)
        assert main(run_args(ner_files, tiny_model, runs, "nan")) == 2
    return runs / ".nan.partial"


def copy_partial(partial: Path, runs: Path, name: str) -> Path:
    shutil.copytree(partial, runs / f".{name}.partial")
    return runs / name


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_result(how, reference, tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    kill_after = random.Random().randrange(2, STEPS - 4, 2)  # a random checkpointed step, some time before the end
    print(f"{how.name} after step {kill_after}")  # shown if the test fails
    pointer = runs / ".killed.partial" / "checkpoints" / "model" / "latest.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "fmkit", *run_args(ner_files, tiny_model, runs, "killed")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if pointer.is_file() and int(json.loads(pointer.read_text())["path"].split("-")[1]) >= kill_after:
            process.send_signal(how)
            break
        time.sleep(0.02)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL if how == signal.SIGKILL else process.returncode == 130, err
    if how == signal.SIGTERM:
        assert f"fmkit run --resume {runs / 'killed'}" in err
    assert not (runs / "killed").exists(), "interrupted: no run"
    assert RunCheckpoints(runs / ".killed.partial").exists(), "its checkpoint is kept (a step's, or the trained member)"

    capsys.readouterr()
    assert main(["run", "--resume", str(runs / "killed")]) == 0, capsys.readouterr().err
    assert_same_outcome(runs / "killed", reference)
    assert not list(runs.glob(".*")), "a completed run leaves no partial folder or checkpoints behind"
    events = [json.loads(line)["event"] for line in (runs / "killed" / "log.jsonl").read_text().splitlines()]
    assert "resume" in events and events.count("epoch") >= 3, "the log goes on from the interrupted run's"


def test_ensemble_resumes_with_its_trained_members_restored(tiny_model, ner_files, tmp_path, capsys):
    from safetensors.torch import load_file

    from fmkit.checkpoint import MemberCheckpoints

    runs, bagging = tmp_path / "runs", ("--plugins", "bagging", "--set", "bagging.members=2")
    assert main([*run_args(ner_files, tiny_model, runs, "whole"), *bagging]) == 0
    save_done = MemberCheckpoints.save_done

    recorded = []

    def interrupted(self, weights, record):  # Ctrl-C right after the trunk and the first member are recorded
        save_done(self, weights, record)
        recorded.append(record)
        if len(recorded) == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemberCheckpoints, "save_done", interrupted)
        assert main([*run_args(ner_files, tiny_model, runs, "cut"), *bagging]) == 130
    assert main(["run", "--resume", str(runs / "cut")]) == 0
    events = [json.loads(line) for line in (runs / "cut" / "log.jsonl").read_text().splitlines()]
    assert [(e["name"], e.get("restored", False)) for e in events if e["event"] == "member"] == \
        [("trunk", False), ("m1", False), ("trunk", True), ("m1", True), ("m2", False)], \
        "the trunk and m1 are restored, not trained again"
    for name in ("m1", "m2"):
        a, b = (load_file(str(runs / r / "model" / "members" / name / "model.safetensors")) for r in ("cut", "whole"))
        assert all(bool((a[k] == b[k]).all()) for k in a), name
    whole, cut = (json.loads((runs / r / "metrics.json").read_text()) for r in ("whole", "cut"))
    assert whole["test"] == cut["test"] and whole["dev"] == cut["dev"]


def test_nan_loss_stops_naming_the_step_and_checkpoint(stopped, tiny_model, ner_files, tmp_path, capsys):
    from safetensors.torch import load_file

    # the fixture's run: its one-line error was printed when it ran; check what it left
    assert not (stopped.parent / "nan").exists(), "no result is written from a NaN run"
    latest = json.loads((stopped / "checkpoints" / "model" / "latest.json").read_text())["path"]
    assert latest == "step-0000004"
    weights = load_file(str(stopped / "checkpoints" / "model" / latest / "weights.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values() if t.is_floating_point())

    with pytest.MonkeyPatch.context() as patch:  # the message, once more, from a copy
        import fmkit.train

        patch.setattr(fmkit.train, "task_loss", lambda logits, batch: logits.sum() * float("nan"))
        runs = tmp_path / "runs"
        capsys.readouterr()
        assert main(["run", "--resume", str(copy_partial(stopped, runs, "again"))]) == 2
    line = one_line_error(capsys)
    assert "loss became nan at epoch 1 step 5" in line and "last good checkpoint: epoch 1 step 4" in line
    assert "train.on_nan=skip" in line and f"fmkit run --resume {runs / 'again'}" in line


def test_resume_after_nan_with_skip_finishes(stopped, tmp_path, capsys):
    import fmkit.train

    runs = tmp_path / "runs"
    target = copy_partial(stopped, runs, "skip")
    with pytest.MonkeyPatch.context() as patch:  # the loss is NaN on the first resumed batch only
        task_loss, calls = fmkit.train.task_loss, {"n": 0}

        def once(logits, batch):
            calls["n"] += 1
            return task_loss(logits, batch) * (float("nan") if calls["n"] == 1 else 1.0)

        patch.setattr(fmkit.train, "task_loss", once)
        capsys.readouterr()
        assert main(["run", "--resume", str(target), "--set", "train.on_nan=skip"]) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (target / "log.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["step"]) for e in events if e["event"] == "skipped"] == [(1, 5)]
    assert json.loads((target / "config.json").read_text())["config"]["train"]["on_nan"] == "skip"
    assert main(["run", "--resume", str(target), "--set", "train.lr=1"]) == 2
    assert "only executor, ray_address, train.checkpoint_every" in one_line_error(capsys)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_unwritable_checkpoint_keeps_the_previous_one(error, reference, tiny_model, ner_files, tmp_path, capsys):
    import fmkit.checkpoint

    runs = tmp_path / "runs"
    write, calls = fmkit.checkpoint._write_weights, {"n": 0}

    def failing(path, tensors):
        calls["n"] += 1
        if calls["n"] > 3:  # the first checkpoint (weights, no best yet) and the second (+ best) went through
            raise OSError(error, os.strerror(error))
        write(path, tensors)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fmkit.checkpoint, "_write_weights", failing)
        assert main(run_args(ner_files, tiny_model, runs, "disk")) == 2
    line = one_line_error(capsys)
    assert f"cannot write a checkpoint in {runs / '.disk.partial' / 'checkpoints' / 'model'}" in line
    assert os.strerror(error) in line and "step-0000004) is intact" in line
    if error == errno.ENOSPC:  # space is back: the run goes on from the intact checkpoint
        assert main(["run", "--resume", str(runs / "disk")]) == 0
        assert_same_outcome(runs / "disk", reference)


def test_truncated_or_foreign_checkpoint_is_a_one_line_error(stopped, tmp_path, capsys):
    import torch

    runs = tmp_path / "runs"
    target = copy_partial(stopped, runs, "broken")
    step = runs / ".broken.partial" / "checkpoints" / "model" / "step-0000004"
    weights = step / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["run", "--resume", str(target)]) == 2
    assert f"{weights}: corrupt or truncated checkpoint" in one_line_error(capsys)

    shutil.copy(stopped / "checkpoints" / "model" / "step-0000004" / "weights.safetensors", weights)
    torch.save({"optimizer": Exploit()}, step / "trainer.pt")  # a pickle that would run code
    assert main(["run", "--resume", str(target)]) == 2
    line = one_line_error(capsys)
    assert f"{step}: corrupt or truncated checkpoint" in line and not Exploit.ran


def test_truncated_model_file_of_a_saved_run_is_named(reference, ner_files, tmp_path, capsys):
    run_dir = shutil.copytree(reference, tmp_path / "ref")
    model_file = run_dir / "model" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data", str(ner_files["test"])]) == 2
    assert str(model_file) in one_line_error(capsys)


def test_fresh_run_never_deletes_a_resumable_one(stopped, tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    target = copy_partial(stopped, runs, "kept")
    capsys.readouterr()
    assert main(run_args(ner_files, tiny_model, runs, "kept")) == 2
    assert f"continue it with `fmkit run --resume {target}`" in one_line_error(capsys)
    assert main(["run", "--resume", str(runs / "nothing")]) == 2
    assert "no interrupted run with a checkpoint there" in one_line_error(capsys)


class Exploit:
    ran = False

    def __reduce__(self):
        return (setattr, (Exploit, "ran", True))
