"""``fmkit sweep`` (issue 20, item 1) on the tiny model: the grid's expansion and cell names, a 2x2 sweep
end to end (run folders, sweep.json, the leaderboard), an interrupted sweep that continues without
training its finished cells again, cells in two subprocesses, an Optuna search whose interrupted trial
resumes from its checkpoint, cells as Ray tasks, and bad input as one line before anything trains."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from fmkit.checkpoint import MemberCheckpoints
from fmkit.cli import main
from fmkit.sweep import Sweep, expand, plugins_of
from fmkit.testing import FAST_TRAIN, data_flags

QUICK = [*FAST_TRAIN, "train.epochs=2", "data.limit=64"]


def sweep_args(grid: str, files: dict, model: Path, runs: Path, *settings: str, extra: tuple = (),
               quick: list[str] = QUICK) -> list[str]:
    return ["sweep", grid, *data_flags(files), "--model", str(model), "--runs-dir", str(runs), *extra,
            *(x for s in (*quick, *settings) for x in ("--set", s))]


def same_sweep(grid: str, files: dict, model: Path, runs: Path, *settings: str, quick: list[str] = QUICK,
               **options) -> Sweep:
    """The Sweep that ``sweep_args`` describes."""
    inputs = {f"data.{split}": str(files[split]) for split in ("train", "dev", "test")} | {"model": str(model)}
    return Sweep(grid, inputs=inputs, settings=[*quick, *settings], runs_dir=runs, **options)


def record(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def events(run: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]


def interrupted_in_cell(number: int):
    """``MemberCheckpoints.save`` that stops the sweep (as Ctrl-C does) right after the first checkpoint of
    the ``number``-th cell that trains."""
    save = MemberCheckpoints.save
    cells: list[Path] = []

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        partial = self.directory.parent.parent  # SWEEP/.CELL.partial/checkpoints/MEMBER
        if partial not in cells:
            cells.append(partial)
        if cells.index(partial) + 1 == number:
            raise KeyboardInterrupt

    return save_then_stop


def test_grid_expands_combinations_value_lists_and_seeds_into_named_cells(tmp_path):
    assert expand("{full,adapter}-{none,pgd}-{single,bagging}") == [
        "full-none-single", "full-none-bagging", "full-pgd-single", "full-pgd-bagging",
        "adapter-none-single", "adapter-none-bagging", "adapter-pgd-single", "adapter-pgd-bagging"]
    assert expand("full, adapter-{pgd,fgsm}") == ["full", "adapter-pgd", "adapter-fgsm"], "top-level alternatives"
    assert expand("{full,full}-{,pgd}") == ["full", "full-pgd"], "each once; an empty factor is no factor"
    assert plugins_of("adapter-none-single") == ["adapter"] and plugins_of("full-pgd-bagging") == ["full", "pgd", "bagging"]

    sweep = Sweep("{full,adapter}-{none,pgd}", settings=["train.lr=1e-4,3e-4", "train.epochs=2", "adapter.r=4,8"],
                  seeds="42,43", runs_dir=tmp_path)
    cells = sweep.cells()
    # full: 2 lr x 2 seeds per combination; adapter also x 2 ranks (adapter.r concerns its cells only)
    assert len(cells) == 2 * 2 * 2 + 2 * 2 * 2 * 2
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    assert names[:4] == ["full-none_train.lr=1e-4_seed42", "full-none_train.lr=1e-4_seed43",
                         "full-none_train.lr=3e-4_seed42", "full-none_train.lr=3e-4_seed43"]
    assert "adapter-pgd_train.lr=3e-4_adapter.r=8_seed43" in names
    assert sweep.directory == tmp_path / "full+adapter-none+pgd", "the default name: the grid, readable"
    config = sweep.config(cells[-1])
    assert (config.plugins, config.seed, config.train.lr, config.train.epochs) == (["adapter", "pgd"], 43, 3e-4, 2)
    assert config.plugin_options == {"adapter": {"r": 8}} and config.runs_dir == sweep.directory
    assert sweep.config(cells[0]).plugin_options == {}, "the adapter option is left out of the full cells"


def test_a_two_by_two_sweep_trains_every_cell_records_them_and_prints_the_leaderboard(tiny_model, ner_files, tmp_path,
                                                                                        capsys):
    runs = tmp_path / "runs"
    assert main(sweep_args("{full,probe}", ner_files, tiny_model, runs, "train.lr=3e-3,1e-2", extra=("--name", "s"))) == 0
    out = capsys.readouterr().out
    folder = runs / "s"
    names = ["full_train.lr=3e-3_seed42", "full_train.lr=1e-2_seed42", "probe_train.lr=3e-3_seed42",
             "probe_train.lr=1e-2_seed42"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted([*names, "sweep.json"])
    saved = record(folder)
    assert saved["grid"]["combinations"] == ["full", "probe"] and saved["grid"]["axes"] == {"train.lr": ["3e-3", "1e-2"]}
    for name in names:
        config = json.loads((folder / name / "config.json").read_text())["config"]
        metrics = json.loads((folder / name / "metrics.json").read_text())
        assert config["train"]["lr"] == float(name.split("=")[1].split("_")[0]) and config["seed"] == 42
        assert config["plugins"] == [name.split("_")[0]]
        entry = saved["cells"][name]
        assert entry["status"] == "done" and entry["metric"] == "f1"
        assert (entry["dev"], entry["test"]) == (metrics["dev"]["f1"], metrics["test"]["f1"])
    board = [line for line in out.splitlines() if any(name in line for name in names)]
    assert len(board) == 4 and sum(line.startswith("*") for line in board) == 1, out
    assert f"sweep saved in {folder}: 4 runs" in out


def test_an_interrupted_sweep_keeps_its_finished_cells_and_resumes_the_rest(tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = sweep_args("full", ner_files, tiny_model, runs, extra=("--seeds", "1,2,3", "--name", "s"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemberCheckpoints, "save", interrupted_in_cell(2))
        assert main(args) == 130
    folder = runs / "s"
    statuses = {name: entry["status"] for name, entry in record(folder)["cells"].items()}
    assert statuses == {"full_seed1": "done", "full_seed2": "interrupted", "full_seed3": "pending"}
    assert (folder / ".full_seed2.partial" / "checkpoints").is_dir() and not (folder / "full_seed3").exists()
    finished = (folder / "full_seed1" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main(args) == 0
    assert "3 cells; 1 finished, 1 to resume, 1 to start" in capsys.readouterr().err
    assert (folder / "full_seed1" / "metrics.json").stat().st_mtime_ns == finished, "a finished cell is not trained again"
    assert "resume" in events(folder / "full_seed2") and "resume" not in events(folder / "full_seed3")
    assert {e["status"] for e in record(folder)["cells"].values()} == {"done"}
    assert not (folder / ".full_seed2.partial").exists()


def test_a_failing_cell_does_not_stop_the_others_and_is_tried_again(tiny_model, ner_files, tmp_path, capsys):
    import fmkit.sweep
    import fmkit.train

    runs = tmp_path / "runs"
    args = sweep_args("full", ner_files, tiny_model, runs, extra=("--seeds", "1,2", "--name", "s"))
    task_loss, train_cell, current = fmkit.train.task_loss, fmkit.sweep.train_cell, {}

    def noting_the_cell(config, *rest):
        current["seed"] = config.seed
        return train_cell(config, *rest)

    def nan_in_seed_1(logits, batch):
        return task_loss(logits, batch) * (float("nan") if current["seed"] == 1 else 1.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fmkit.sweep, "train_cell", noting_the_cell)
        patch.setattr(fmkit.train, "task_loss", nan_in_seed_1)
        assert main(args) == 2
    out, err = capsys.readouterr()
    folder = runs / "s"
    cells = record(folder)["cells"]
    assert cells["full_seed1"]["status"] == "failed" and cells["full_seed2"]["status"] == "done"
    assert err.splitlines()[-1] == (f"fmkit: error: 1 of 2 cells failed (see {folder / 'sweep.json'}); full_seed1: "
                                    f"{cells['full_seed1']['error']}; the same command tries them again")
    assert "full_seed2" in out and "full_seed1" not in out, "the leaderboard of what finished"
    assert main(args) == 0
    assert {e["status"] for e in record(folder)["cells"].values()} == {"done"}


def test_cells_run_two_at_a_time_as_fmkit_run_subprocesses_with_their_resolved_config(tiny_model, ner_files, tmp_path,
                                                                                     capsys):
    from fmkit.registry import select, with_train_defaults
    from fmkit_adapt.adapter import LEARNING_RATES

    runs = tmp_path / "runs"
    quick = [s for s in QUICK if not s.startswith("train.lr=")]  # the adapter's default rate must reach its cell
    args = sweep_args("{full,adapter}", ner_files, tiny_model, runs, "adapter.r=2", quick=quick,
                      extra=("--jobs", "2", "--name", "s"))
    assert main(args) == 0, capsys.readouterr().err
    folder = runs / "s"
    sweep = same_sweep("{full,adapter}", ner_files, tiny_model, runs, "adapter.r=2", quick=quick, name="s")
    for cell in sweep.cells():
        recorded = json.loads((folder / cell.name / "config.json").read_text())["config"]
        config = sweep.config(cell)
        assert recorded == with_train_defaults(config, select(config)).model_dump(mode="json"), "as fmkit run resolves it"
        assert (folder / ".cells" / f"{cell.name}.log").is_file() and record(folder)["cells"][cell.name]["dev"] is not None
    adapter = json.loads((folder / "adapter_seed42" / "config.json").read_text())["config"]
    assert adapter["plugin_options"] == {"adapter": {"r": 2}} and adapter["train"]["lr"] == LEARNING_RATES["lora"]


@pytest.mark.skipif(find_spec("optuna") is None, reason="Optuna is an optional extra: pip install 'fmkit[optuna]'")
def test_an_optuna_search_resumes_its_study_and_its_interrupted_trial(tiny_model, ner_files, tmp_path, capsys):
    import optuna
    from optuna.trial import TrialState

    runs = tmp_path / "runs"
    args = sweep_args("{full,probe}", ner_files, tiny_model, runs, "train.lr=1e-3:1e-2:log", "train.epochs=1:2",
                      extra=("--search", "optuna", "--trials", "3", "--name", "s"))
    folder = runs / "s"
    with pytest.MonkeyPatch.context() as patch:  # stopped during the second trial, after its first checkpoint
        patch.setattr(MemberCheckpoints, "save", interrupted_in_cell(2))
        assert main(args) == 130
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    cut = next(n for n, e in record(folder)["cells"].items() if e["status"] == "interrupted")
    done = next(n for n, e in record(folder)["cells"].items() if e["status"] == "done")
    finished = (folder / done / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main(args) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states[1] == TrialState.FAIL, "the cut trial is asked again"
    assert study.trials[2].params == study.trials[1].params
    assert "resume" in events(folder / cut), "the interrupted trial's cell continues from its checkpoint"
    assert (folder / done / "metrics.json").stat().st_mtime_ns == finished
    cells = record(folder)["cells"]
    assert len(cells) == 3 and {e["status"] for e in cells.values()} == {"done"}
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            name = next(n for n, e in cells.items() if e["trial"] == trial.number)
            assert trial.value == cells[name]["dev"]
            assert name.startswith(trial.params["plugins"]) and f"train.epochs={trial.params['train.epochs']}" in name
            lr = json.loads((folder / name / "config.json").read_text())["config"]["train"]["lr"]
            assert 1e-3 <= lr <= 1e-2 and lr == pytest.approx(trial.params["train.lr"], rel=1e-3)


@pytest.mark.skipif(find_spec("optuna") is None, reason="Optuna is an optional extra: pip install 'fmkit[optuna]'")
def test_a_search_prunes_a_trial_on_its_dev_score_after_an_epoch(tiny_model, ner_files, tmp_path, capsys, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    import fmkit.sweep

    # a rule that prunes a trial after its first epoch unless its dev score beats 2 (never): the median rule's
    # decisions depend on the scores, this one's on the mechanism alone
    monkeypatch.setattr(fmkit.sweep, "median_pruner", lambda: optuna.pruners.ThresholdPruner(upper=2.0, lower=2.0))
    runs = tmp_path / "runs"
    args = sweep_args("full", ner_files, tiny_model, runs, "train.lr=1e-3:1e-2:log", "train.epochs=3",
                      extra=("--search", "optuna", "--trials", "2", "--name", "s"))
    assert main(args) == 0, capsys.readouterr().err
    folder = runs / "s"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    cells = record(folder)["cells"]
    assert len(cells) == 2 and all(e["status"] == "done" and e["pruned_at"] == 1 for e in cells.values())
    for name in cells:
        assert events(folder / name).count("epoch") == 1, "the training stopped after the first of 3 epochs"
        metrics = json.loads((folder / name / "metrics.json").read_text())
        assert metrics["test"]["f1"] is not None, "a pruned cell is still a finished run, scored on test"
    assert [list(t.intermediate_values) for t in study.trials] == [[1], [1]]


@pytest.mark.skipif(find_spec("ray") is None, reason="Ray is an optional extra: pip install 'fmkit[ray]'")
def test_cells_run_as_ray_tasks(tiny_model, ner_files, tmp_path, capsys):
    import ray

    runs = tmp_path / "runs"
    try:
        assert main(sweep_args("full", ner_files, tiny_model, runs, extra=("--seeds", "1,2", "--executor", "ray",
                                                                            "--name", "s"))) == 0
    finally:
        ray.shutdown()
    cells = record(runs / "s")["cells"]
    assert set(cells) == {"full_seed1", "full_seed2"} and {e["status"] for e in cells.values()} == {"done"}
    assert all((runs / "s" / name / "metrics.json").is_file() for name in cells)


BAD_INPUT = [
    ("{full,adaptr}", [], "unknown plugin 'adaptr' (did you mean 'adapter'?); installed: "),
    ("{full,adapter", [], "grid '{full,adapter': braces must pair up and not nest"),
    ("full;pgd", [], "grid 'full;pgd': unexpected ';'"),
    ("{}", [], "empty grid '{}': name plugin combinations"),
    ("full", ["--set", "train.lrr=1e-4,3e-4"], "unknown option 'train.lrr' (did you mean 'train.lr'?)"),
    ("{full,adapter}", ["--set", "adapter.rr=4"], "unknown option 'adapter.rr' (did you mean 'adapter.r'?)"),
    ("full", ["--set", "pgd.steps=3"], "--set pgd.steps: plugin 'pgd' is in no combination of the grid"),
    ("full", ["--set", "plugins=pgd"], "--set plugins=pgd: a sweep sets plugins for each cell"),
    ("full", ["--set", "train.lr=1e-3:1e-5:log", "--search", "optuna", "--trials", "2"],
     "--set train.lr=1e-3:1e-5:log: a range is LOW:HIGH or LOW:HIGH:log, numbers with LOW < HIGH"),
    ("full", ["--set", "train.lr=0:1e-3:log", "--search", "optuna", "--trials", "2"],
     "--set train.lr=0:1e-3:log: a range is LOW:HIGH"),
    ("full", ["--set", "train.lr=1e-5:x", "--search", "optuna", "--trials", "2"], "--set train.lr=1e-5:x: a range is"),
    ("full", ["--set", "train.lr=1e-5:1e-3"], "--set train.lr=1e-5:1e-3: a range is sampled by --search optuna"),
    ("full", ["--set", "train.lr=1e-5:1e-3", "--search", "optuna"], "--search optuna needs --trials N"),
    ("full", ["--search", "optuna", "--trials", "2"], "--search optuna: nothing to search"),
    ("full", ["--seeds", "1,x"], "--seeds '1,x': comma-separated whole numbers"),
    ("full", ["--jobs", "0"], "--jobs 0: give at least 1"),
    ("full", ["--train", "missing.conll"], "missing.conll: file does not exist"),
]


@pytest.mark.parametrize("grid, extra, message", BAD_INPUT, ids=[f"{g} {' '.join(e)}" for g, e, _ in BAD_INPUT])
def test_bad_input_is_one_line_before_anything_trains(grid, extra, message, tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main([*sweep_args(grid, ner_files, tiny_model, runs), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fmkit: error: {message}"), err
    assert not runs.exists(), "nothing was made"


def test_optuna_missing_names_the_extra(tiny_model, ner_files, tmp_path, capsys, monkeypatch):
    import fmkit.sweep

    monkeypatch.setattr(fmkit.sweep, "find_spec", lambda name: None)
    args = [*sweep_args("full", ner_files, tiny_model, tmp_path), "--set", "train.lr=1e-5:1e-3:log",
            "--search", "optuna", "--trials", "2"]
    assert main(args) == 2
    assert capsys.readouterr().err == ("fmkit: error: --search optuna needs Optuna, which is not installed: "
                                       "pip install 'fmkit[optuna]'\n")


def test_a_changed_grid_under_the_same_name_is_refused_unless_overwritten(tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    folder = runs / "s"
    same_sweep("full", ner_files, tiny_model, runs, name="s").open(overwrite=False)  # sweep.json of seed 42
    (folder / "old-cell").mkdir()
    changed = sweep_args("full", ner_files, tiny_model, runs, extra=("--name", "s", "--seeds", "7"))
    assert main(changed) == 2
    assert capsys.readouterr().err == (f"fmkit: error: sweep {folder} was made with another grid (seeds: [42] -> [7]); "
                                       "use another --name, or --overwrite to start afresh\n")
    assert (folder / "old-cell").is_dir(), "nothing removed"
    assert main([*changed, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["full_seed7", "sweep.json"]
    assert record(folder)["grid"]["seeds"] == [7]
    (folder / "sweep.json").unlink()
    capsys.readouterr()
    assert main(changed) == 2
    assert capsys.readouterr().err == f"fmkit: error: {folder} exists and is not a sweep (no sweep.json): choose another --name\n"
