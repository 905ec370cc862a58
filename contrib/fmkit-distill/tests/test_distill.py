"""fmkit-distill on fmkit's tiny test model: the loss is the recipe's, and students learn from a single-model
and from an ensemble teacher, through the installed entry point."""

from __future__ import annotations

import json
import math

import pytest

from fmkit.cli import main
from fmkit.testing import FAST_TRAIN, make_tiny_model, write_ner_files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return {"model": make_tiny_model(root / "model"), "data": write_ner_files(root / "data", train=120, dev=30, test=30),
            "runs": root / "runs"}


def run(setup, name: str, plugins: str, *settings: str) -> dict:
    data = setup["data"]
    sets = [x for s in (*FAST_TRAIN, *settings) for x in ("--set", s)]  # 8 epochs: a teacher worth learning from
    code = main(["run", "--plugins", plugins, "--model", str(setup["model"]), "--train", str(data["train"]),
                 "--dev", str(data["dev"]), "--test", str(data["test"]), "--runs-dir", str(setup["runs"]),
                 "--name", name, *sets])
    assert code == 0
    return json.loads((setup["runs"] / name / "metrics.json").read_text())


def test_loss_is_alpha_ce_plus_t2_kl():
    import torch

    from fmkit.train import task_loss
    from fmkit_distill import SoftTargets

    soft = SoftTargets.__new__(SoftTargets)
    soft.kind, soft.alpha, soft.temperature, soft.misses = "ner", 0.3, 2.0, 0
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    softened = teacher ** 0.5 / (teacher ** 0.5).sum(-1, keepdim=True)
    soft.table = {(2, 7, 8, 3): ([1, 2], softened.numpy())}
    logits = torch.randn(1, 4, 3)
    batch = {"input_ids": torch.tensor([[2, 7, 8, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, 0, 2, -100]])}
    student = torch.log_softmax(logits[0, 1:3] / 2.0, dim=-1)
    kl = torch.nn.functional.kl_div(student, softened, reduction="batchmean")
    expected = 0.3 * task_loss(logits, batch) + 0.7 * 4.0 * kl
    assert math.isclose(float(soft.loss(logits, batch)), float(expected), rel_tol=1e-5)
    batch["input_ids"] = torch.tensor([[2, 9, 9, 3]])  # unknown window: gold labels only, counted
    assert math.isclose(float(soft.loss(logits, batch)), 0.3 * float(task_loss(logits, batch)), rel_tol=1e-5)
    assert soft.misses == 1


def teacher_run(setup, plugins: str):
    """The teacher run of ``plugins`` (trained once per module)."""
    name = f"teacher-{plugins}"
    if not (setup["runs"] / name).is_dir():
        run(setup, name, plugins, *(["bagging.members=2"] if plugins == "bagging" else []))
    return setup["runs"] / name


@pytest.mark.parametrize("teacher_plugins", ["full", "bagging"])
def test_student_learns_from_teacher(setup, teacher_plugins):
    teacher = teacher_run(setup, teacher_plugins)
    student = run(setup, f"student-of-{teacher_plugins}", "distill", f"distill.teacher={teacher}", "distill.alpha=0.5")
    assert student["test"]["f1"] > 0.7, student["test"]
    assert "robust" not in student  # the soft-target loss is no attack
    config = json.loads((setup["runs"] / f"student-of-{teacher_plugins}" / "config.json").read_text())
    assert config["plugins"]["distill"]["package"] == "fmkit-distill"
    log = (setup["runs"] / f"student-of-{teacher_plugins}" / "report.txt").read_text()
    assert f"({2 if teacher_plugins == 'bagging' else 1} member(s)) scored 120 training examples" in log
    assert main(["eval", str(setup["runs"] / f"student-of-{teacher_plugins}"), "--data", str(setup["data"]["test"])]) == 0


def test_out_of_bag_targets_come_from_the_members_that_never_trained_on_the_example(setup, capsys):
    from fmkit.plugin import load_run, load_task_data
    from fmkit_distill import out_of_bag_members

    teacher = load_run(teacher_run(setup, "bagging"))
    examples = load_task_data(teacher.run.config)[1].train
    chosen = out_of_bag_members(teacher, examples, setup["runs"] / "teacher-bagging")
    samples = [set(m.spec.indices) for m in teacher.ensemble.members]
    for row, members in enumerate(chosen):
        assert members == [0, 1] or all(row not in samples[k] for k in members), (row, members)
    assert sum(len(m) == 1 for m in chosen) > 20, "2 bootstraps of 120 rows leave ~40% of rows out of one of them"

    student = run(setup, "student-out-of-bag", "distill", f"distill.teacher={setup['runs'] / 'teacher-bagging'}",
                  "distill.out_of_bag=true")
    assert student["test"]["f1"] > 0.7, student["test"]
    assert "by the members that never trained on them only" in (setup["runs"] / "student-out-of-bag" / "report.txt").read_text()
    capsys.readouterr()

    data = setup["data"]
    assert main(["run", "--plugins", "distill", "--model", str(setup["model"]), "--train", str(data["train"]),
                 "--dev", str(data["dev"]), "--runs-dir", str(setup["runs"]), "--name", "no-bags",
                 "--set", f"distill.teacher={teacher_run(setup, 'full')}", "--set", "distill.out_of_bag=true",
                 *[x for s in FAST_TRAIN for x in ("--set", s)]]) == 2
    assert "distill.out_of_bag: the teacher" in capsys.readouterr().err


def transfer_sentences(setup, n: int) -> list[list[tuple[str, str]]]:
    """``n`` synthetic sentences, none with the words of a training sentence nor of another one."""
    from fmkit.testing import synthetic_sentences

    seen = {tuple(line.split()) for line in training_lines(setup)}
    fresh = []
    for sentence in synthetic_sentences(4 * n, seed=7):
        words = tuple(w for w, _ in sentence)
        if words not in seen and len(fresh) < n:
            seen.add(words)
            fresh.append(sentence)
    return fresh


def training_lines(setup) -> list[str]:
    """The training sentences as text lines, words only."""
    from fmkit.data.readers import read_conll

    return [" ".join(s.words) for s in read_conll(setup["data"]["train"])]


def test_transfer_examples_join_the_training_rows_with_the_teachers_labels(setup, tmp_path):
    from transformers import AutoTokenizer

    from fmkit.plugin import Foundation, Run, RunConfig, TaskData, encode, load_run, load_task_data
    from fmkit.testing import write_conll
    from fmkit_distill import Distill

    fresh = transfer_sentences(setup, 30)
    again = [[(w, "O") for w in line.split()] for line in training_lines(setup)[:10]] + fresh[:1]  # to be skipped
    # CoNLL whose tag column is all wrong: the teacher's tags must replace it
    transfer = write_conll(tmp_path / "transfer.conll", [[(w, "B-PER") for w, _ in s]
                                                         for s in [*fresh[:15], *again, *fresh[15:]]])
    data = setup["data"]
    config = RunConfig(model=str(setup["model"]), data={"train": data["train"], "dev": data["dev"]})
    task, split = load_task_data(config)
    foundation = Foundation(str(setup["model"]), AutoTokenizer.from_pretrained(setup["model"]))
    run = Run(config, task, split, None, foundation=foundation)
    teacher = teacher_run(setup, "bagging")
    plugin = Distill(Distill.Options(teacher=teacher, transfer=transfer))

    train = plugin.fmkit_data(run=run, train=split.train)  # the data stage, then the core freezes the rows
    run.data = TaskData(train, split.dev, split.test)
    soft = plugin.fmkit_harden(run=run)

    added = run.data.train[120:]
    assert [e.words for e in added] == [[w for w, _ in s] for s in fresh]
    loaded = load_run(teacher)
    assert [e.tags for e in added] == loaded.scorer.predict(loaded.ensemble.predict_proba, added, "check")
    assert sum(tag != "O" for e in added for tag in e.tags) > 10, "the teacher tags names and places"
    assert "30 examples join the 120 training examples" in run.notes[0] and "11 skipped" in run.notes[0]
    assert '"added": 30, "skipped": 11' in run.log_text
    assert "and 30 transfer examples" in run.notes[1]
    import torch

    for f in encode(run.task, added, foundation.tokenizer, config.train.max_length):
        batch = {"input_ids": torch.tensor([f.input_ids]), "attention_mask": torch.ones(1, len(f.input_ids), dtype=torch.long)}
        targets, mask = soft.targets(batch, len(task.labels))
        assert mask.sum() == len(f.word_positions)
    assert soft.misses == 0


def test_a_student_trains_on_a_transfer_set(setup, tmp_path):
    transfer = tmp_path / "transfer.txt"  # plain text, one sentence a line
    transfer.write_text("".join(" ".join(w for w, _ in s) + "\n" for s in transfer_sentences(setup, 120)))
    teacher = teacher_run(setup, "full")
    student = run(setup, "student-transfer", "distill", f"distill.teacher={teacher}", f"distill.transfer={transfer}")
    assert student["test"]["f1"] > 0.7, student["test"]
    report = (setup["runs"] / "student-transfer" / "report.txt").read_text()
    assert "120 examples join the 120 training examples" in report
    assert "scored 120 training examples, and 120 transfer examples" in report
    log = (setup["runs"] / "student-transfer" / "log.jsonl").read_text()
    assert '"event": "distill_transfer"' in log and '"added": 120' in log
    assert main(["eval", str(setup["runs"] / "student-transfer"), "--data", str(setup["data"]["test"])]) == 0


@pytest.mark.parametrize(("content", "message"), [
    (None, "file does not exist"),
    ("", "file is empty"),
    (b"caf\xe9\n", ":1: not UTF-8"),
])
def test_an_unreadable_transfer_set_is_a_one_line_error(setup, tmp_path, capsys, content, message):
    transfer = tmp_path / "transfer.txt"
    if content is not None:
        transfer.write_bytes(content.encode() if isinstance(content, str) else content)
    data = setup["data"]
    sets = [x for s in (f"distill.teacher={teacher_run(setup, 'full')}", f"distill.transfer={transfer}")
            for x in ("--set", s)]
    assert main(["run", "--plugins", "distill", "--model", str(setup["model"]), "--train", str(data["train"]),
                 "--runs-dir", str(setup["runs"]), *sets]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fmkit: error: ")]
    assert len(errors) == 1 and f"distill.transfer: {transfer}" in errors[0] and message in errors[0], errors


@pytest.mark.parametrize(("settings", "message"), [
    ([], "distill.teacher: name the teacher's run directory"),
    (["distill.teacher=/nonexistent"], "distill.teacher: /nonexistent is not a run directory"),
    (["distill.teacher=x", "distill.student=distill"], "distill.student: 'distill' is not another adapt plugin"),
    (["distill.teacher=x", "distill.student_options={rank: 2}"], "unknown option 'distill.student_options.rank'"),
])
def test_bad_settings_are_one_line_errors(setup, capsys, settings, message):
    data = setup["data"]
    sets = [x for s in settings for x in ("--set", s)]
    assert main(["run", "--plugins", "distill", "--model", str(setup["model"]), "--train", str(data["train"]),
                 "--runs-dir", str(setup["runs"]), *sets]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fmkit: error: ")]
    assert len(errors) == 1 and message in errors[0], errors


def test_a_student_ensemble_trains_as_ray_tasks_like_in_one_process(setup, tmp_path):
    """Under --executor ray each member trains in a worker that rebuilds the run from what the driver sends: the
    data stage's rows (with the transfer set the teacher labelled) and the soft targets in run.plugin_state. A
    worker that re-ran the stages, or read the driver's plugin instance, would differ or fail."""
    ray = pytest.importorskip("ray")
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("".join(" ".join(w for w, _ in s) + "\n" for s in transfer_sentences(setup, 40)))
    teacher = teacher_run(setup, "full")
    options = (f"distill.teacher={teacher}", f"distill.transfer={transfer}", "bagging.members=2", "bagging.trunk=0",
               "bagging.sample=1.0", "train.epochs=6")
    try:
        on_ray = run(setup, "student-bagging-ray", "distill,bagging", *options, "executor=ray")
    finally:
        ray.shutdown()
    here = run(setup, "student-bagging-here", "distill,bagging", *options)
    for metrics in (on_ray, here):
        for member in metrics["members"].values():
            member.pop("train_seconds")
    assert on_ray["members"] == here["members"] and on_ray["test"] == here["test"]
    assert here["test"]["f1"] > 0.5, here["test"]
    report = (setup["runs"] / "student-bagging-ray" / "report.txt").read_text()
    assert "training 2 members as Ray tasks" in report and "40 examples join the 120 training examples" in report
