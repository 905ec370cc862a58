"""End to end on the tiny model: train, evaluate, save, reload with plain transformers, eval, predict."""

import json

import pytest

from fmkit.cli import main
from fmkit.testing import set_flags


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def ner_run(tiny_model, ner_files, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = run_cli("run", "--task", "ner", "--train", ner_files["train"], "--dev", ner_files["dev"],
                   "--test", ner_files["test"], "--model", tiny_model, "--runs-dir", runs, "--name", "tiny",
                   "--seed", 5, *set_flags())
    assert code == 0
    return runs / "tiny"


def test_tiny_model_learns_a_trivial_tagging_task(ner_run):
    metrics = json.loads((ner_run / "metrics.json").read_text())
    assert metrics["test"]["f1"] >= 0.9, metrics["test"]
    assert 0 <= metrics["test"]["precision"] <= 1 and 0 <= metrics["test"]["recall"] <= 1
    assert metrics["members"]["model"]["trainable_params"] == metrics["members"]["model"]["total_params"] > 0


def test_run_directory_contents(ner_run):
    assert sorted(p.name for p in ner_run.iterdir()) == ["README.md", "config.json", "log.jsonl", "metrics.json", "model",
                                                         "predictions", "report.html", "report.txt"]
    config = json.loads((ner_run / "config.json").read_text())
    assert config["config"]["seed"] == 5 and config["config"]["train"]["epochs"] == 8
    assert set(config["plugins"]) == {"hf", "full"}
    assert config["plugins"]["hf"]["version"] and config["task"]["labels"][0] == "O"
    events = [json.loads(line) for line in (ner_run / "log.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "member"} <= {e["event"] for e in events}
    assert "LOC" in (ner_run / "report.txt").read_text()
    assert not list(ner_run.parent.glob(".*")), "no temporary files left behind"


def test_saved_model_loads_with_plain_transformers(ner_run, ner_files):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(ner_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(ner_run / "model")
    assert model.config.id2label[0] == "O" and "B-PER" in model.config.label2id
    enc = tokenizer(["alice", "met", "bob"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits.argmax(-1)[0, 1:-1]
    assert [model.config.id2label[int(i)] for i in predicted] == ["B-PER", "O", "B-PER"]


def test_eval_json_matches_the_run_test_metrics(ner_run, ner_files, capsys):
    capsys.readouterr()
    assert run_cli("eval", ner_run, "--data", ner_files["test"], "--json") == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((ner_run / "metrics.json").read_text())["test"]
    assert result["f1"] == pytest.approx(saved["f1"]) and result["examples"] == 40


def test_predict_writes_conll_columns_for_text_and_conll_input(ner_run, tmp_path, capsys):
    text = tmp_path / "tweets.txt"
    text.write_text("alice went to new york\nbob saw paris\n")
    out = tmp_path / "pred.conll"
    assert run_cli("predict", ner_run, text, "--output", out) == 0
    blocks = [b.splitlines() for b in out.read_text().strip().split("\n\n")]
    assert blocks[0] == ["alice\tB-PER", "went\tO", "to\tO", "new\tB-LOC", "york\tI-LOC"]
    assert blocks[1] == ["bob\tB-PER", "saw\tO", "paris\tB-LOC"]
    assert run_cli("predict", ner_run, text, "--output", out) == 2, "never overwrites"
    assert "already exists" in capsys.readouterr().err


def test_existing_run_is_refused_and_left_untouched(ner_run, ner_files, tiny_model, capsys):
    before = (ner_run / "metrics.json").read_bytes()
    code = run_cli("run", "--train", ner_files["train"], "--dev", ner_files["dev"], "--model", tiny_model,
                   "--runs-dir", ner_run.parent, "--name", "tiny", *set_flags())
    assert code == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (ner_run / "metrics.json").read_bytes() == before


def test_classify_run_and_predict(tiny_model, classify_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_cli("run", "--task", "classify", "--train", classify_files["train"], "--dev", classify_files["dev"],
                   "--model", tiny_model, "--runs-dir", runs, "--name", "cls", *set_flags("train.epochs=10"))
    assert code == 0
    metrics = json.loads((runs / "cls" / "metrics.json").read_text())
    assert "test" not in metrics and metrics["dev"]["accuracy"] >= 0.9, metrics["dev"]
    assert "no test split" in capsys.readouterr().out
    texts = tmp_path / "texts.txt"
    texts.write_text("the good old\nawful the a\n")
    assert run_cli("predict", runs / "cls", texts) == 0
    assert capsys.readouterr().out.split() == ["pos", "neg"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda f, m, r: ["--train", f["train"].parent / "nope.conll", "--model", m], "nope.conll: file does not exist"),
        (lambda f, m, r: ["--train", f["train"], "--model", r / "no-model"], "no-model: no such directory"),
        (lambda f, m, r: ["--train", f["train"], "--model", m, "--set", "train.epochs=0"],
         "option train.epochs: Input should be greater than or equal to 1"),
        (lambda f, m, r: ["--train", f["train"], "--model", m, "--plugins", "nope"], "unknown plugin 'nope'"),
        (lambda f, m, r: ["--train", f["train"], "--model", m, "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(make_args, message, ner_files, tiny_model, tmp_path, capsys):
    code = run_cli("run", "--runs-dir", tmp_path / "runs", "--name", "bad", *make_args(ner_files, tiny_model, tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_fresh_head_starts_at_the_training_label_prior(tiny_model):
    """The output bias is log(label frequency), add-one smoothed: the untrained model already
    predicts the prior, so its first steps need not push every logit toward O."""
    import torch

    from fmkit.data.readers import Sentence
    from fmkit.model import TextModelBuilder, start_at_label_prior
    from fmkit.types import Foundation, Task

    task = Task("ner", ["O", "B-PER", "I-PER"], "IOB2")
    model = TextModelBuilder(Foundation(str(tiny_model), None), task).build()
    train = [Sentence(["a", "b", "c", "d"], ["O", "O", "B-PER", "O"], 1), Sentence(["e"], ["O"], 6)]
    start_at_label_prior(model, task, train)
    prior = torch.softmax(model.classifier.bias, dim=0).tolist()
    assert prior == pytest.approx([5 / 8, 2 / 8, 1 / 8]), "counts 4, 1, 0 plus one each"
    assert model.classifier.weight.abs().max() < 0.2, "the weights keep their small initialisation"


def test_every_run_starts_its_head_at_the_training_label_prior(tiny_model, ner_files, tmp_path):
    """The pipeline applies the prior to each fresh model: after one step at a learning rate of
    1e-9 the saved head still predicts the training tags' frequencies."""
    from collections import Counter

    import torch
    from transformers import AutoModelForTokenClassification

    code = run_cli("run", "--task", "ner", "--train", ner_files["train"], "--dev", ner_files["dev"],
                   "--model", tiny_model, "--runs-dir", tmp_path, "--name", "prior",
                   *set_flags("train.epochs=1", "train.lr=1e-9"))
    assert code == 0
    tags = Counter(line.split()[-1] for line in ner_files["train"].read_text().splitlines() if line.strip())
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "prior" / "model")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    expected = [(tags[label] + 1) / (sum(tags.values()) + len(labels)) for label in labels]
    assert torch.softmax(model.classifier.bias, dim=0).tolist() == pytest.approx(expected, abs=1e-5)
