"""Scale-out with existing engines, on the tiny model: two data-parallel processes under
``accelerate launch`` (gloo on CPU), and ensemble members as tasks on a local Ray."""

from __future__ import annotations

import json
import math
import os
import socket
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest
from fmkit.cli import main
from fmkit.testing import set_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_per_epoch(run_dir: Path) -> int:
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return sum(1 for e in events if e["event"] == "step" and e["epoch"] == 1)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate command is not on PATH")
def test_two_processes_train_data_parallel(tiny_model, ner_files, tmp_path):
    data = ["--train", ner_files["train"], "--dev", ner_files["dev"], "--test", ner_files["test"],
            "--model", tiny_model, "--runs-dir", tmp_path / "runs", "--seed", "5", *set_flags()]
    assert main(["run", "--name", "one", *map(str, data)]) == 0
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    done = subprocess.run([*launch, "-m", "fmkit", "run", "--name", "two", *map(str, data)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"], "only the main process writes a run directory"
    assert done.stdout.count("run saved in") == 1
    one, two = (json.loads((runs / n / "metrics.json").read_text())["test"]["f1"] for n in ("one", "two"))
    assert two >= 0.9 and abs(one - two) <= 0.05, (one, two)
    assert steps_per_epoch(runs / "two") == math.ceil(steps_per_epoch(runs / "one") / 2), "each process took half"


def bagging_run(executor: str, model: Path, files: dict, runs: Path) -> Path:
    args = ["run", "--plugins", "bagging", "--executor", executor, "--model", model, "--train", files["train"],
            "--dev", files["dev"], "--test", files["test"], "--runs-dir", runs, "--name", executor,
            *set_flags("bagging.members=2", "bagging.trunk=0", "train.epochs=3")]
    assert main([str(a) for a in args]) == 0
    return runs / executor


@pytest.mark.skipif(find_spec("ray") is None, reason="Ray is an optional extra: pip install 'fmkit[ray]'")
def test_ray_members_match_sequential_ones(tiny_model, ner_files, tmp_path):
    import ray
    import torch
    from safetensors.torch import load_file

    runs = tmp_path / "runs"
    try:
        ray_run = bagging_run("ray", tiny_model, ner_files, runs)
    finally:
        ray.shutdown()
    sequential = bagging_run("sequential", tiny_model, ner_files, runs)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (ray_run, sequential)]
    for m in metrics:
        for member in m["members"].values():
            member.pop("train_seconds")
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["members"] == metrics[1]["members"]
    for name in ("m1", "m2"):
        a, b = (load_file(str(r / "model" / "members" / name / "model.safetensors")) for r in (ray_run, sequential))
        # a Ray task trains on one thread, this process on two: sums round differently, by ~1e-7
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a), f"member {name} differs"
    events = [json.loads(line) for line in (ray_run / "log.jsonl").read_text().splitlines()]
    assert {e["member"] for e in events if e["event"] == "step"} == {"m1", "m2"}
    assert "training 2 members as Ray tasks" in (ray_run / "report.txt").read_text()


def test_ray_executor_without_ray_says_what_to_install(tiny_model, tmp_path, monkeypatch, capsys):
    import fmkit.members

    monkeypatch.setattr(fmkit.members, "find_spec", lambda name: None)
    assert main(["run", "--executor", "ray", "--model", str(tiny_model), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "fmkit: error: --executor ray needs Ray, which is not installed: pip install 'fmkit[ray]'\n"
