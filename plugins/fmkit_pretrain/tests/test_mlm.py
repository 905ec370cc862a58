"""The ``mlm`` pretrain continuation on the tiny model: it lowers the held-out masked-LM loss, the
task stages train on the adapted backbone, the run reloads, and a bad corpus fails before any work."""

import json

import pytest

from fmkit.cli import main
from fmkit.testing import FAST_TRAIN

PERSONS, PLACES = ["alice", "bob", "carol", "dave"], ["paris", "london", "rome", "berlin"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def settings(*extra: str) -> list[str]:
    return [x for s in (*FAST_TRAIN, *extra) for x in ("--set", s)]


def test_mlm_lowers_heldout_loss_and_the_task_trains_on_the_adapted_backbone(tiny_model, ner_files, tmp_path):
    import torch
    from safetensors.torch import load_file

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{p} went to {c} with {q}\n" for p in PERSONS for c in PLACES for q in PERSONS))
    runs = tmp_path / "runs"
    code = run_cli("run", "--plugins", "mlm,adapter", "--train", ner_files["train"], "--dev", ner_files["dev"],
                   "--model", tiny_model, "--runs-dir", runs, "--name", "dapt",
                   *settings("train.epochs=2", f"mlm.corpus={corpus}", "mlm.steps=60", "mlm.lr=2e-3",
                             "mlm.batch_size=16", "mlm.heldout=0.25"))
    assert code == 0
    run = runs / "dapt"
    event = next(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"mlm"' in line)
    assert event["texts"] == 48 and event["heldout_texts"] == 16 and event["fresh_head"]
    assert event["loss_after"] < 0.8 * event["loss_before"], event
    assert "held-out masked-LM loss" in (run / "report.txt").read_text()

    saved = json.loads((run / "config.json").read_text())
    assert saved["foundation"]["path"] == "mlm", "recorded relative to the run, which moves after saving"
    adapted, original = load_file(run / "mlm" / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(adapted[key], original[key])
    assert torch.equal(adapted["pooler.dense.weight"], original["pooler.dense.weight"]), "the checkpoint's pooler is kept"
    adapter_config = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"].endswith("mlm")
    assert run_cli("eval", run, "--data", ner_files["dev"]) == 0, "reloads on the backbone inside the run"


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("\n  \n", "has no text"),
    ("just one line\n", "has one line"),
])
def test_bad_corpus_is_a_one_line_error_before_any_work(content, message, tiny_model, ner_files, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_text(content)
    code = run_cli("run", "--plugins", "mlm", "--train", ner_files["train"], "--model", tiny_model,
                   "--runs-dir", tmp_path / "runs", "--name", "bad", "--set", f"mlm.corpus={corpus}")
    err = capsys.readouterr().err
    assert code == 2 and f"mlm.corpus: {corpus} {message}" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists(), "refused before the run directory was made"
