"""The user's API and what a run directory gives a user (issue 19), on the tiny model: fmkit.run, fmkit.load
and predict (entity spans with offsets), predict as a Unix filter, export, reproducing a run from its own
config.json, the options' JSON Schema, the model card, and bad run directories as one line."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import pytest

import fmkit
from fmkit.cli import main
from fmkit.testing import fast_train_options

DOCS = Path(__file__).resolve().parent.parent / "docs"


def options(tiny_model, ner_files, runs, name: str, **extra) -> dict:
    """A tiny run's options, as fmkit.run takes them (FAST_TRAIN as nested keys)."""
    return {"task": "ner", "model": str(tiny_model), "data": {k: str(v) for k, v in ner_files.items()},
            "train": fast_train_options(), "runs_dir": str(runs), "name": name, **extra}


@pytest.fixture(scope="module")
def trained(tiny_model, ner_files, tmp_path_factory):
    return fmkit.run(**options(tiny_model, ner_files, tmp_path_factory.mktemp("runs"), "api"))


@pytest.fixture(scope="module")
def predictor(trained):
    return fmkit.load(trained.directory)


def test_run_returns_the_directory_and_the_saved_metrics(trained):
    assert trained.directory.name == "api" and (trained.directory / "model" / "config.json").is_file()
    saved = json.loads((trained.directory / "metrics.json").read_text())
    assert trained.metrics["test"] == saved["test"] and saved["test"]["f1"] >= 0.9


def test_predict_gives_entity_spans_with_character_offsets_and_scores(predictor):
    texts = ["alice went to new york.", "  bob saw paris"]
    tagged = predictor.predict(texts)
    assert predictor.task == "ner" and "B-PER" in predictor.labels
    assert [(e.type, e.text) for e in tagged[0].entities] == [("PER", "alice"), ("LOC", "new york")]
    for text, prediction in zip(texts, tagged):
        assert prediction.text == text
        for entity in prediction.entities:
            assert text[entity.start:entity.end] == entity.text and 0 < entity.score <= 1
    assert tagged[0].words == ["alice", "went", "to", "new", "york", "."], "punctuation is a word of its own"
    assert tagged[1].entities[1].start == 10, "offsets count the leading spaces"
    words, empty = predictor.predict([["bob", "saw", "rome"], ""])
    assert words.text == "bob saw rome" and [e.text for e in words.entities] == ["bob", "rome"]
    assert empty.entities == [] and empty.tags == []
    assert predictor.predict(texts, batch_size=1) == tagged, "batching does not change predictions"


def test_predict_refuses_inputs_of_the_wrong_kind_in_one_line(predictor):
    with pytest.raises(fmkit.FmkitError, match="takes texts or lists of words"):
        predictor.predict([{"text": "alice"}])
    with pytest.raises(fmkit.FmkitError, match="input 2 is a int"):
        predictor.predict(["alice", 3])


def stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_predict_is_a_filter_on_standard_input(trained, monkeypatch, capsys):
    stdin(monkeypatch, b"alice went to new york\nbob saw paris\n")
    assert main(["predict", str(trained.directory), "-", "--output-format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["alice went to new york", "bob saw paris"]
    assert lines[0]["entities"][1] == {**lines[0]["entities"][1], "type": "LOC", "start": 14, "end": 22,
                                       "text": "new york"}

    stdin(monkeypatch, b"")
    assert main(["predict", str(trained.directory), "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "", "an empty stream: nothing written"

    stdin(monkeypatch, b"alice went\nbob \xff saw\n")
    assert main(["predict", str(trained.directory), "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmkit: error: <stdin>:2: not UTF-8") and err.count("\n") == 1


def test_auto_format_reads_a_pipe_once_and_detects_one_sentence_conll(trained, tmp_path, capsys):
    one_sentence = tmp_path / "one.conll"
    one_sentence.write_text("alice B-PER\nwent O\nto O\nrome B-LOC\n")
    assert main(["predict", str(trained.directory), str(one_sentence)]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice\tB-PER", "went\tO", "to\tO", "rome\tB-LOC"]

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text("alice\nwent\n\nbob\nsaw\nparis\n"))
    writer.start()
    assert main(["predict", str(trained.directory), str(pipe)]) == 0
    writer.join(timeout=10)
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert [len(block.splitlines()) for block in blocks] == [2, 3], "unlabelled CoNLL from a pipe, read once"


def test_export_predicts_what_the_run_predicts_and_never_overwrites(trained, predictor, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = fmkit.export(trained.directory, tmp_path / "exported")
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    batch = dict(AutoTokenizer.from_pretrained(out)([["alice", "went", "to", "rome"]], is_split_into_words=True,
                                                     return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(torch.softmax(model(**batch).logits, -1), predictor.loaded.ensemble.predict_proba(batch),
                              atol=1e-5)
    assert main(["export", str(trained.directory), str(out)]) == 2


def test_a_run_reproduces_from_its_own_config_json(trained, tmp_path, capsys):
    record = trained.directory / "config.json"
    assert main(["run", "--config", str(record), "--name", "again", "--runs-dir", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test"] == trained.metrics["test"] and again["dev"] == trained.metrics["dev"]
    assert json.loads((tmp_path / "again" / "config.json").read_text())["config"]["name"] == "again"


def test_the_options_schema_and_choices_are_shown(capsys):
    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["adapter"]["properties"]["method"]["enum"][:2] == ["lora", "ia3"]
    assert "epochs" in schema["$defs"]["TrainConfig"]["properties"] and schema["additionalProperties"] is False
    assert main(["plugins", "show", "adapter"]) == 0
    assert "adapter.method  (lora | ia3 | loha | lokr | adalora | prefix | prompt, default 'lora')" in \
        capsys.readouterr().out
    assert "Literal" not in (DOCS / "user-guide.md").read_text(encoding="utf-8")


def test_the_model_card_holds_metadata_scores_and_loading_code(trained):
    import yaml

    card = (trained.directory / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    result = meta["model-index"][0]["results"][0]
    assert result["task"]["type"] == "token-classification" and result["dataset"]["split"] == "test"
    assert {m["type"]: m["value"] for m in result["metrics"]}["f1"] == round(trained.metrics["test"]["f1"], 4)
    assert meta["library_name"] == "transformers" and "base_model" not in meta, "a local foundation has no hub id"
    assert meta["fmkit"]["plugins"]["full"]["stage"] == "adapt"
    assert "## How to load" in card and "AutoModelForTokenClassification.from_pretrained" in card
    assert re.search(r"LOC\s+1\.0000", card), "per-type scores"
    assert "## Limits" in card


@pytest.mark.parametrize(("damage", "message"), [
    (lambda run: (run / "model" / "model.safetensors").unlink(), "model.safetensors: missing"),
    (lambda run: shutil.rmtree(run / "model"), "model: missing"),
    (lambda run: (run / "config.json").write_text((run / "config.json").read_text().replace(
        f'"fmkit_version": "{fmkit.__version__}"', '"fmkit_version": "99.0"')), "made by fmkit 99.0, newer than"),
])
def test_a_damaged_run_directory_is_one_line_naming_what_is_missing(damage, message, trained, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained.directory, run)
    damage(run)
    assert main(["predict", str(run), "-"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_api_doc_example_runs(tiny_model, ner_files, tmp_path, monkeypatch, capsys):
    """docs/api.md's example as written, with the tiny model and schedule put in for the default ones."""
    source = re.search(r"```python\n(.*?)```", (DOCS / "api.md").read_text(encoding="utf-8"), re.S).group(1)
    for split, path in ner_files.items():
        shutil.copy(path, tmp_path / f"{split}.conll")
    monkeypatch.chdir(tmp_path)
    real_run = fmkit.run

    def tiny_run(**given):
        tiny = options(tiny_model, ner_files, "runs", "tweets")
        return real_run(**{**given, "model": tiny["model"], "train": tiny["train"]})

    monkeypatch.setattr(fmkit, "run", tiny_run)
    exec(compile(source, "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "PER 0 5 'alice'" in printed and (tmp_path / "tweets-model" / "config.json").is_file()


def test_runs_at_other_precisions_follow_each_other_in_one_process(tiny_model, ner_files, tmp_path):
    """Accelerate's state is global and its precision fixed once set: fmkit resets it between runs (a
    sweep's cells, a notebook), so a bf16 run after an fp32 one trains in bf16, and fp32 after it again."""
    from fmkit.train import accelerator_for

    for name, precision in (("fp32", "no"), ("bf16", "bf16"), ("again", "no")):
        run_options = options(tiny_model, ner_files, tmp_path, name)
        run_options["train"]["precision"] = precision
        result = fmkit.run(**run_options)
        assert accelerator_for(precision).mixed_precision == precision
        assert result.metrics["test"]["f1"] > 0.5, f"{name}: trained"


@pytest.mark.parametrize("in_hardware, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(in_hardware, expected, monkeypatch):
    import fmkit.train

    monkeypatch.setattr(fmkit.train, "bf16_in_hardware", lambda: in_hardware)
    assert fmkit.train.resolved_precision("auto") == expected
    assert fmkit.train.accelerator_for("auto").mixed_precision == expected
    assert fmkit.train.resolved_precision("fp16") == "fp16", "an explicit precision is kept"


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="resets the resident peak on Linux only")
def test_each_run_in_a_process_reports_its_own_peak_memory(tiny_model, ner_files, tmp_path):
    """A sweep's cells run one after another in one process: the second run's peak must not be the first's."""

    class Hog:
        held: list = []

        @fmkit.hookimpl
        def fmkit_event(self, run, event):
            if event.name == "train_begin":
                self.held.append(bytearray(300 * 2**20))  # touched: 300 MiB resident

    hungry = fmkit.run(**options(tiny_model, ner_files, tmp_path, "hungry"), callbacks=[Hog()])
    Hog.held.clear()
    modest = fmkit.run(**options(tiny_model, ner_files, tmp_path, "modest"))
    assert hungry.metrics["peak_memory_mb"] - modest.metrics["peak_memory_mb"] > 200
