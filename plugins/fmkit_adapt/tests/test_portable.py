"""Adapter runs used elsewhere (issue 19): trained on a foundation named by its hub id (a hub cache made
here, offline), copied to another folder with the training machine's cache hidden, and loaded there
without fmkit by the standard calls and by the code of each run's README.md; fmkit predicts and exports
them without warnings and without changing the process's environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest

import fmkit
from fmkit.cli import main
from fmkit.testing import FAST_TRAIN, put_in_hub_cache

HUB_ID = "fmkit-test/tiny-bert"
WORDS = ["alice", "went", "to", "new", "york"]


@pytest.fixture(scope="module")
def runs(tiny_model, ner_files, tmp_path_factory):
    """An adapter run, an adapter bagging run and an adapter soup, on the tiny model as the hub id HUB_ID."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("portable")
    put_in_hub_cache(tiny_model, root / "training-cache", HUB_ID)
    patch = pytest.MonkeyPatch()
    patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "training-cache"))
    patch.delenv("HF_HUB_OFFLINE", raising=False)
    sets = [x for s in (*FAST_TRAIN, "train.epochs=3", "train.lr=1e-2") for x in ("--set", s)]
    files = [x for split, path in ner_files.items() for x in (f"--{split}", str(path))]
    try:
        for name, plugins, extra in [("lora", "adapter", []), ("bag", "adapter,bagging", ["bagging.members=2"]),
                                     ("soup", "adapter,soup", ["soup.members=2"])]:
            assert main(["run", "--plugins", plugins, "--model", HUB_ID, *files, "--runs-dir", str(root / "runs"),
                         "--name", name, *sets, *[x for s in extra for x in ("--set", s)]]) == 0
        assert "HF_HUB_OFFLINE" not in os.environ, "the hf plugin leaves the environment as it was"
    finally:
        patch.undo()
    shutil.rmtree(root / "training-cache")  # the training machine's foundation is gone
    return root


def test_the_adapter_names_its_base_by_hub_id_and_carries_it(runs):
    model_dir = runs / "runs" / "lora" / "model"
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert {"config.json", "model.safetensors", "adapter_model.safetensors"} <= {p.name for p in model_dir.iterdir()}
    assert "base_model: fmkit-test/tiny-bert" in (runs / "runs" / "lora" / "README.md").read_text()
    record = json.loads((runs / "runs" / "lora" / "config.json").read_text())["foundation"]
    assert record["origin"] == HUB_ID and "training-cache" in record["path"], "the path, only as a record"


ELSEWHERE = textwrap.dedent('''
    import json, re, sys, pathlib
    import torch
    from peft import AutoPeftModelForTokenClassification
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    def readme_code(run):
        text = pathlib.Path(run, "README.md").read_text()
        return "\\n".join(re.findall(r"```python\\n(.*?)```", text, re.S)).replace(sys.argv[1] + "/" + run, run)

    out = {}
    tokenizer = AutoTokenizer.from_pretrained("./lora/model")
    inputs = tokenizer([%r], is_split_into_words=True, return_tensors="pt")
    model = AutoModelForTokenClassification.from_pretrained("./lora/model").eval()
    labels = model.config.id2label
    peft = AutoPeftModelForTokenClassification.from_pretrained(
        "./lora/model", num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}).eval()
    with torch.no_grad():
        out["auto"] = model(**inputs).logits.softmax(-1).tolist()
        out["peft"] = peft(**inputs).logits.softmax(-1).tolist()
    out["labels"] = labels
    for run in ("lora", "soup", "bag"):
        namespace = {}
        exec(readme_code(run), namespace)
        if run == "bag":
            out["bag"] = namespace["combined"].tolist()
    print(json.dumps(out))
''' % WORDS)


def test_runs_load_elsewhere_without_fmkit_by_the_standard_calls_and_their_readme(runs, tiny_model, tmp_path):
    import torch

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs / "runs", elsewhere)
    other_cache = tmp_path / "other-cache"  # the other machine's hub cache, where PEFT finds the base by hub id
    put_in_hub_cache(tiny_model, other_cache, HUB_ID)
    env = {**os.environ, "HF_HUB_CACHE": str(other_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", ELSEWHERE, str(runs / "runs")], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    lora, bag = fmkit.load(runs / "runs" / "lora"), fmkit.load(runs / "runs" / "bag")
    batch = dict(lora.loaded.run.foundation.tokenizer([WORDS], is_split_into_words=True, return_tensors="pt"))
    with torch.no_grad():
        expected = lora.loaded.ensemble.predict_proba(batch)
        bag_batch = dict(bag.loaded.run.foundation.tokenizer("Barack Obama visited Paris .", return_tensors="pt"))
        bag_expected = bag.loaded.ensemble.predict_proba(bag_batch)[0]
    assert torch.allclose(torch.tensor(out["auto"]), expected, atol=1e-5), "AutoModelFor: the run's predictions"
    assert torch.allclose(torch.tensor(out["peft"]), expected, atol=1e-5), "AutoPeftModelFor: the same"
    assert out["labels"]["0"] == "O" and "B-PER" in out["labels"].values()
    assert torch.allclose(torch.tensor(out["bag"]), bag_expected, atol=1e-5), "README code: the run's vote"


def test_predict_and_eval_print_no_library_warning(runs, ner_files, capsys):
    lora = runs / "runs" / "lora"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(lora), str(ner_files["test"])]) == 0
        assert main(["eval", str(lora), "--data", str(ner_files["test"]), "--json"]) == 0
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err
    assert err == "", err


def test_export_merges_the_adapter_and_predicts_what_the_run_predicts(runs, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification

    for name in ("lora", "soup"):
        run = fmkit.load(runs / "runs" / name)
        out = fmkit.export(runs / "runs" / name, tmp_path / name)
        assert not (out / "adapter_config.json").exists(), "a plain model: the adapter is in its weights"
        model = AutoModelForTokenClassification.from_pretrained(out).eval()
        batch = dict(run.loaded.run.foundation.tokenizer([WORDS], is_split_into_words=True, return_tensors="pt"))
        with torch.no_grad():
            assert torch.allclose(torch.softmax(model(**batch).logits, -1), run.loaded.ensemble.predict_proba(batch),
                                  atol=1e-5), name
    with pytest.raises(fmkit.FmkitError, match="an ensemble of 2 models, which is not one model"):
        fmkit.export(runs / "runs" / "bag", tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_a_prompt_run_reloads_on_a_local_copy_of_its_base(tiny_model, ner_files, tmp_path, capsys):
    """Prompt tuning saves no base beside its virtual tokens: its run reloads on the foundation, and when that
    is gone, on the copy --base-model points at; without one, one line says how to give it."""
    sets = [x for s in (*FAST_TRAIN, "train.epochs=1", "adapter.method=prompt", "adapter.num_virtual_tokens=4",
                        "train.max_length=64") for x in ("--set", s)]
    foundation = shutil.copytree(tiny_model, tmp_path / "foundation")
    assert main(["run", "--plugins", "adapter", "--model", str(foundation), "--train", str(ner_files["train"]),
                 "--dev", str(ner_files["dev"]), "--runs-dir", str(tmp_path), "--name", "prompt", *sets]) == 0
    shutil.rmtree(foundation)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "prompt"), str(ner_files["test"])]) == 2
    err = capsys.readouterr().err
    assert "is not on this machine: give a local copy (--base-model PATH" in err and err.count("\n") == 1
    assert main(["predict", str(tmp_path / "prompt"), str(ner_files["test"]), "--base-model", str(tiny_model)]) == 0
    assert re.match(r"\w+\t[BIO]", capsys.readouterr().out)
