"""``wordswap`` and ``textattack`` on the tiny model: an NER attack leaves gold entities alone, raises the loss
on the words it keeps, respects its budget and counts its queries; runs keep successful attacks in
attacks.jsonl and print two; training on adversarial copies runs; bad input is one line before any weights."""

import json
import math

import pytest
import torch

import fmkit
from fmkit.cli import main
from fmkit.plugin import Sentence, TextExample, read_examples, task_loss
from fmkit.testing import FAST_TRAIN
from fmkit_harden import textattack_recipes
from fmkit_harden.words import WordAttack, Words


def cli(*args) -> int:
    return main([str(a) for a in args])


def settings(*extra):
    return [x for s in [*FAST_TRAIN, *extra] for x in ("--set", s)]


@pytest.fixture(scope="module")
def ner_run(tiny_model, ner_files, tmp_path_factory):
    """A briefly trained NER model: right on many words, not on all, so the attack has work to do."""
    runs = tmp_path_factory.mktemp("runs")
    assert cli("run", "--train", ner_files["train"], "--dev", ner_files["dev"], "--test", ner_files["test"],
               "--model", tiny_model, "--runs-dir", runs, "--name", "clean",
               *settings("train.epochs=2", "train.lr=2e-3")) == 0
    return runs / "clean"


@pytest.fixture(scope="module")
def loaded(ner_run):
    return fmkit.load(ner_run).loaded


def engine(loaded, **options):
    values = {"budget": 1.0, "queries": 60, "candidates": 5, "neighbours": 30, **options}
    return WordAttack(loaded.run.task, loaded.run.foundation.tokenizer, 128, **values)


@pytest.fixture(scope="module")
def test_sentences(loaded, ner_files):
    return read_examples(loaded.run.config, ner_files["test"])


def test_ner_attack_changes_only_context_words_and_keeps_the_word_count(loaded, test_sentences):
    model = loaded.ensemble.members[0].model
    attack = engine(loaded)
    results = [attack.attack(model, s) for s in test_sentences]
    assert sum(r.changed for r in results) >= 10  # it does change words
    for sentence, result in zip(test_sentences, results):
        after = result.example
        assert after.tags == sentence.tags and len(after.words) == len(sentence.words)
        differ = [i for i, (a, b) in enumerate(zip(sentence.words, after.words)) if a != b]
        assert len(differ) == result.changed
        assert all(sentence.tags[i] == "O" for i in differ), (sentence.words, after.words, sentence.tags)
        assert all(after.words[i].isalpha() and "#" not in after.words[i] for i in differ)  # whole words only
        assert not {sentence.words[i] for i in differ} & {"the", "a", "to", "and", "in", "with"}  # no stopword
        assert sentence.words != after.words or result.changed == 0


def test_the_attack_raises_the_loss(loaded, test_sentences, tiny_model):
    model = loaded.ensemble.members[0].model
    changed = [r for r in (engine(loaded).attack(model, s) for s in test_sentences) if r.changed]
    assert changed and all(r.loss_after > r.loss_before for r in changed)
    # classify, measured with the core's loss on the whole text: swapping a word raises it
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fmkit.plugin import Task

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    task = Task("classify", ["neg", "pos"])
    attack = WordAttack(task, tokenizer, 64, budget=0.5, queries=60, candidates=5, neighbours=30)
    for line, text in enumerate(["the old man went to paris today", "alice saw a big dog"]):
        with torch.no_grad():  # the label it predicts: an example it gets right, so the attack runs
            label = task.labels[int(classifier(**tokenizer([text], return_tensors="pt")).logits.argmax())]
        example = TextExample(text, label, line)
        result = attack.attack(classifier, example)
        losses = []
        for text in (example.text, result.example.text):
            batch = {**tokenizer([text], return_tensors="pt"), "labels": torch.tensor([task.label2id[example.label]])}
            batch.pop("token_type_ids")
            with torch.no_grad():
                losses.append(float(task_loss(classifier(**batch).logits, batch)))
        assert result.changed >= 1 and losses[1] > losses[0], (example.text, result.example.text, losses)


@pytest.mark.parametrize("budget", [0.15, 0.3, 0.5])
def test_the_budget_is_respected(loaded, test_sentences, budget):
    model = loaded.ensemble.members[0].model
    for sentence in test_sentences:
        result = engine(loaded, budget=budget).attack(model, sentence)
        assert result.changed <= math.floor(budget * len(sentence.words) + 1e-9)
        if len(sentence.words) * budget < 1:  # 0.15: a sentence needs 7 words for one swap
            assert result.example is sentence and result.queries == 0


def test_queries_are_counted_and_capped(loaded, test_sentences):
    model = loaded.ensemble.members[0].model
    rows = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: rows.append(len(out.logits)), with_kwargs=True)
    try:
        results = [engine(loaded, queries=7).attack(model, s) for s in test_sentences]
    finally:
        hook.remove()
    assert sum(r.queries for r in results) == sum(rows)  # one row per sentence: every forward pass counted
    assert all(r.queries <= 7 for r in results) and any(r.queries == 7 for r in results)
    only_gradient = [engine(loaded, queries=1).attack(model, s) for s in test_sentences]
    assert all(r.changed == 0 and r.queries <= 1 for r in only_gradient)


def test_texts_keep_what_lies_between_words():
    words = Words.of(TextExample("Great movie, don't miss it!", "pos", 1))
    assert words.words == ("Great", "movie", "don't", "miss", "it")
    assert words.replaced(1, "film").example.text == "Great film, don't miss it!"


def test_eval_reports_the_word_attack_beside_its_cost(ner_run, ner_files, capsys):
    capsys.readouterr()
    assert cli("eval", ner_run, "--data", ner_files["test"], "--attack", "wordswap", "--set", "wordswap.budget=0.5",
               "--json") == 0
    robust = json.loads(capsys.readouterr().out)["robust"]["wordswap"]
    assert 0 < robust["words_changed"] <= 0.5 and robust["queries"] > 1 and robust["seconds_per_example"] > 0
    assert {"f1", "attack_success_rate", "samples"} <= set(robust)


@pytest.fixture(scope="module")
def classify_run(tiny_model, classify_files, tmp_path_factory):
    """A run trained with wordswap, and what it printed."""
    import contextlib
    import io

    runs, printed = tmp_path_factory.mktemp("runs"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli("run", "--task", "classify", "--train", classify_files["train"], "--dev", classify_files["dev"],
                   "--model", tiny_model, "--runs-dir", runs, "--name", "words", "--plugins", "wordswap",
                   *settings("train.epochs=3", "wordswap.budget=0.5"))
    assert code == 0
    return runs / "words", printed.getvalue()


def test_a_run_keeps_successful_attacks_and_prints_two(classify_run):
    classify_run, printed = classify_run
    metrics = json.loads((classify_run / "metrics.json").read_text())
    robust = metrics["robust"]["wordswap"]["dev"]
    assert robust["accuracy"] < metrics["dev"]["accuracy"] and "samples" not in robust
    assert robust["words_changed"] > 0 and robust["queries"] > 1
    samples = [json.loads(line) for line in (classify_run / "attacks.jsonl").read_text().splitlines()]
    assert samples and all(s["before"] == s["gold"] != s["after"] and s["original"] != s["perturbed"]
                           for s in samples[:1])
    assert {"attack", "split", "original", "perturbed", "gold", "before", "after"} <= set(samples[0])
    assert f"  - {samples[0]['original']}" in printed and f"  + {samples[1]['perturbed']}" in printed
    assert printed.count("    gold ") == 2


def test_training_attacks_a_share_of_the_rows_each_epoch_from_the_second(classify_run):
    classify_run, _ = classify_run
    events = [json.loads(line) for line in (classify_run / "log.jsonl").read_text().splitlines()]
    refreshed = [e for e in events if e["event"] == "wordswap"]
    assert [e["epoch"] for e in refreshed] == [2, 3]  # train.epochs=3, start_epoch=2
    assert all(e["attacked"] == 40 and 0 < e["changed"] <= 40 for e in refreshed)  # 0.2 of 200 rows


def test_adversarial_rows_join_the_batch():
    from fmkit_harden.wordswap import concatenated

    batch = {"input_ids": torch.tensor([[2, 7, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 1, -100]]), "weights": torch.tensor([0.5])}
    extra = {"input_ids": torch.tensor([[2, 8, 9, 10, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "labels": torch.tensor([[-100, 0, 2, 0, -100]])}
    merged = concatenated(batch, extra, pad_id=0)
    assert merged["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 8, 9, 10, 3]]
    assert merged["labels"][0].tolist() == [-100, 1, -100, -100, -100] and merged["weights"].tolist() == [0.5, 1.0]


@pytest.fixture
def no_weights_load(monkeypatch):
    """Loading a saved model fails loudly: errors must come before it."""
    import fmkit.artifacts

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")

    monkeypatch.setattr(fmkit.artifacts, "load_members", refuse)


@pytest.mark.parametrize(("args", "message"), [
    (["--attack", "wordswap", "--set", "wordswap.budget=0"], "option wordswap.budget: Input should be greater than 0"),
    (["--attack", "wordswap", "--set", "wordswap.budget=1.5"], "option wordswap.budget: Input should be less than or equal to 1"),
    (["--attack", "wordswp"], "--attack wordswp: unknown attack (did you mean 'wordswap'?); attacks: fgsm, freelb, pgd"),
    (["--attack", "textattack:deepwordbug"], "TextAttack's recipes attack classify runs, this run is ner; use --attack wordswap"),
    (["--attack", "textattack:textfooler"], "recipe 'textfooler' needs counter-fitted word embeddings (paragramcf)"),
    (["--attack", "textattack:deepwordbog"], "unknown recipe 'deepwordbog' (did you mean 'deepwordbug'?)"),
    (["--attack", "pgd:strong"], "--attack pgd:strong: pgd takes nothing after ':'"),
])
def test_bad_attacks_are_one_line_before_any_weights(args, message, ner_run, ner_files, no_weights_load, capsys):
    capsys.readouterr()
    assert cli("eval", ner_run, "--data", ner_files["test"], *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_textattack_not_installed_is_one_line(classify_run, classify_files, no_weights_load, monkeypatch, capsys):
    monkeypatch.setattr(textattack_recipes, "find_spec", lambda name: None)
    capsys.readouterr()
    assert cli("eval", classify_run[0], "--data", classify_files["dev"], "--attack", "textattack:pruthi") == 2
    err = capsys.readouterr().err
    assert "--attack textattack needs TextAttack, which is not installed: pip install 'fmkit[textattack]'" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--plugins", "wordswap", "--set", "wordswap.budget=2"], "option wordswap.budget: Input should be less than or equal to 1"),
    (["--plugins", "textattack"], "textattack: attacks saved classify runs"),
])
def test_bad_training_options_fail_before_training(args, message, ner_files, tiny_model, tmp_path, capsys):
    code = cli("run", "--train", ner_files["train"], "--model", tiny_model, "--runs-dir", tmp_path, "--name", "bad", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_a_sentence_with_entities_only_is_left_alone(loaded):
    sentence = Sentence(["alice", "paris"], ["B-PER", "B-LOC"], 1)
    result = engine(loaded).attack(loaded.ensemble.members[0].model, sentence)
    assert result.example is sentence and result.changed == 0 and result.queries == 0
