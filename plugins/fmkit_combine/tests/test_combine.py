"""Combine plugins on the tiny model: bootstraps differ, out-of-fold is out of fold, boosting weights
follow the errors (scikit-learn's arithmetic), a soup is the average of its members, adapter members
share one backbone and run in one batched pass, and bad settings are one-line errors."""

import json
import shutil

import numpy as np
import pytest

from fmkit.cli import main
from fmkit.testing import FAST_TRAIN

QUICK = [s for s in FAST_TRAIN if not s.startswith("train.epochs")] + ["train.epochs=2"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def settings(*extra: str) -> list[str]:
    return [x for s in (*QUICK, *extra) for x in ("--set", s)]


def classify_run(runs, files, model, name, plugins, *extra) -> object:
    code = run_cli("run", "--task", "classify", "--train", files["train"], "--dev", files["dev"], "--model", model,
                   "--runs-dir", runs, "--name", name, "--plugins", plugins, *settings(*extra))
    assert code == 0
    return runs / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("ensemble-runs")


@pytest.fixture(scope="module")
def bagging_run(runs, tiny_model, ner_files):
    code = run_cli("run", "--task", "ner", "--train", ner_files["train"], "--dev", ner_files["dev"], "--test",
                   ner_files["test"], "--model", tiny_model, "--runs-dir", runs, "--name", "bagging",
                   "--plugins", "adapter,bagging", *settings("bagging.members=2", "bagging.sample=0.5", "train.epochs=1"))
    assert code == 0
    return runs / "bagging"


@pytest.fixture(scope="module")
def stacking_run(runs, tiny_model, classify_files):
    return classify_run(runs, classify_files, tiny_model, "stacking", "stacking", "stacking.members=3")


def layout(run_dir) -> dict:
    return json.loads((run_dir / "model" / "ensemble.json").read_text())


def test_bagging_members_train_on_different_recorded_bootstrap_samples(bagging_run):
    members = layout(bagging_run)["members"]
    samples = [m["indices"] for m in members]
    assert [len(s) for s in samples] == [120] * 2, "bagging.sample=0.5 of 240 rows"
    assert all(len(set(s)) < len(s) for s in samples), "drawn with replacement"
    assert samples[0] != samples[1], "each member has its own sample"
    metrics = json.loads((bagging_run / "metrics.json").read_text())
    assert set(metrics["members"]) == {"m1", "m2"} and "f1" in metrics["test"]


def test_adapter_members_share_one_backbone_and_predict_in_one_pass(bagging_run, ner_files, capsys):
    import torch
    from peft import PeftModel

    from fmkit.data import read_examples
    from fmkit.data.batching import Collator
    from fmkit.artifacts import load
    from fmkit.evaluate import member_probabilities, softmax_predictor

    loaded = load(bagging_run)
    models = [m.model for m in loaded.ensemble.members]
    assert len({id(m.holder) for m in models}) == 1, "one backbone in memory"
    examples = read_examples(loaded.run.config, ner_files["test"])[:4]
    batch = Collator(loaded.scorer.pad_id)(list(enumerate(loaded.scorer.encode("test", examples))))
    with torch.no_grad():
        batched = member_probabilities(models, batch)
        one_by_one = torch.stack([softmax_predictor(m)(batch) for m in models])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert not torch.allclose(one_by_one[0], one_by_one[1]), "the members differ"

    standalone = PeftModel.from_pretrained(loaded.builder.build(), bagging_run / "model" / "members" / "m2")
    with torch.no_grad():
        assert torch.allclose(softmax_predictor(standalone.eval())(batch), one_by_one[1], atol=1e-5)

    capsys.readouterr()
    assert run_cli("eval", bagging_run, "--data", ner_files["test"], "--json") == 0
    saved = json.loads((bagging_run / "metrics.json").read_text())["test"]["f1"]
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(saved)


def test_the_soft_vote_is_attacked_as_the_one_model_it_is(bagging_run, ner_files, capsys):
    import torch

    from fmkit.data import read_examples
    from fmkit.data.batching import Collator
    from fmkit.artifacts import load
    from fmkit.assess import robust_metrics
    from fmkit.train import task_loss
    from fmkit_combine.vote import Vote

    loaded = load(bagging_run, "pgd")
    vote = loaded.ensemble.attackable()
    examples = read_examples(loaded.run.config, ner_files["test"])[:4]
    batch = Collator(loaded.scorer.pad_id)(list(enumerate(loaded.scorer.encode("test", examples))))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.allclose(torch.softmax(vote(**inputs).logits, -1), loaded.ensemble.predict_proba(batch), atol=1e-5)
        clean_loss = task_loss(vote(**inputs).logits, batch)
    attacked_loss = task_loss(loaded.attacks["pgd"].attack(vote, batch), batch)
    assert attacked_loss > clean_loss * 1.01, "the attack climbs the ensemble's own loss"
    assert Vote(loaded.ensemble.members, vote="hard").attackable() is None, "an argmax has no gradient"
    clean = {"test": loaded.scorer.predict(loaded.ensemble.predict_proba, examples, "test")}
    by_slices = []
    for slices in (1, 2):  # slices bound memory; each row's attack is its own, so results must not change
        vote.attack_slices = slices
        by_slices.append(robust_metrics(loaded.scorer, vote, loaded.attacks, {"test": examples}, clean))
    assert by_slices[0] == by_slices[1]

    capsys.readouterr()
    assert run_cli("eval", bagging_run, "--data", ner_files["test"], "--attack", "pgd", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["robust"]) == ["pgd"], "the combination is attacked, not its members one by one"
    assert {"f1", "attack_success_rate"} <= set(result["robust"]["pgd"])


def test_stacking_meta_learner_sees_only_out_of_fold_predictions(stacking_run, classify_files, capsys):
    state = layout(stacking_run)
    folds = state["state"]["folds"]
    assert sorted(set(folds)) == [0, 1, 2] and len(folds) == 200
    for f, member in enumerate(state["members"]):
        assert not {r for r, g in enumerate(folds) if g == f} & set(member["indices"]), "its own fold held out"
        assert {r for r, g in enumerate(folds) if g != f} == set(member["indices"])
    assert (stacking_run / "model" / "stacking.skops").is_file()

    from fmkit.types import Member, MemberSpec
    from fmkit_combine.stacking import out_of_fold

    members = [Member(MemberSpec(m["name"], 0, m["indices"]), model=None) for m in state["members"]]
    oof = out_of_fold(members, folds, lambda m, rows: [np.array([int(m.name[1:])])] * len(rows))
    assert all(int(p[0]) - 1 == folds[r] for r, p in enumerate(oof)), "each row scored by the member that held it out"

    capsys.readouterr()
    assert run_cli("eval", stacking_run, "--data", classify_files["dev"], "--json") == 0
    saved = json.loads((stacking_run / "metrics.json").read_text())["dev"]["accuracy"]
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(saved)


def test_members_with_different_label_sets_are_refused(stacking_run, classify_files, tmp_path, capsys):
    copy = tmp_path / "edited"
    shutil.copytree(stacking_run, copy)
    config_file = copy / "model" / "members" / "m2" / "config.json"
    config = json.loads(config_file.read_text())
    config["id2label"] = {"0": "neg", "1": "neutral"}
    config_file.write_text(json.dumps(config))
    capsys.readouterr()
    assert run_cli("eval", copy, "--data", classify_files["dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "m2" in err and "different label sets" in err


def test_samme_arithmetic_matches_scikit_learn_adaboost():
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.ensemble import AdaBoostClassifier

    from fmkit_combine.boosting import samme_round

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    rounds = [np.where(rng.random(40) < p, (y + 1) % 3, y) for p in (0.2, 0.35, 0.3)]  # scripted predictions

    class Scripted(ClassifierMixin, BaseEstimator):
        def fit(self, X, y, sample_weight=None):
            self.classes_, self.round_ = np.unique(y), len(fitted)
            fitted.append(self)
            return self

        def predict(self, X):
            return rounds[self.round_][X[:, 0].astype(int)]

    fitted: list = []
    reference = AdaBoostClassifier(Scripted(), n_estimators=3).fit(np.arange(40)[:, None], y)
    weights, alphas, errors = np.full(40, 1 / 40), [], []
    for predicted in rounds:
        incorrect = (predicted != y).astype(float)
        updated, alpha, error = samme_round(weights, incorrect, 3)
        growth = updated / weights
        assert growth[incorrect == 1] / growth[incorrect == 0][0] == pytest.approx(np.exp(alpha)), \
            "the rows it got wrong grow exp(alpha) times more"
        alphas.append(alpha)
        errors.append(error)
        weights = updated
    assert alphas == pytest.approx(reference.estimator_weights_.tolist())
    assert errors == pytest.approx(reference.estimator_errors_.tolist())
    by_error = np.array(alphas)[np.argsort(errors)]
    assert np.all(np.diff(by_error) < 0), "a member with fewer weighted errors gets a larger weight"
    assert samme_round(np.full(4, 0.25), np.array([1.0, 1, 1, 0]), 3)[0] is None, "no better than chance: dropped"


def test_boosting_run_records_weights_from_the_weighted_errors(runs, tiny_model, classify_files):
    saved = layout(classify_run(runs, classify_files, tiny_model, "boosting", "boosting", "boosting.members=2"))
    state = saved["state"]
    for alpha, error in zip(state["member_weights"], state["weighted_errors"]):
        assert alpha == pytest.approx(np.log((1 - error) / error) + np.log(2 - 1) if error else 1.0)
    assert state["weights"] == pytest.approx([a / sum(state["member_weights"]) for a in state["member_weights"]])
    # each member's row weights are recorded: uniform for the first, then up by exp(alpha) on its errors
    first, second = (np.array(m["weights"]) for m in saved["members"])
    assert first == pytest.approx(1.0) and second.mean() == pytest.approx(1.0, abs=1e-4)
    assert sorted(set(second.round(4))) == pytest.approx([second.min(), second.min() * np.exp(state["member_weights"][0])],
                                                         rel=1e-3), "two weights: rows the first member got right and wrong"


def test_soup_is_the_average_of_its_adapter_members_weights(runs, tiny_model, classify_files):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir = classify_run(runs, classify_files, tiny_model, "soup", "adapter,soup", "soup.members=2",
                           "soup.mode=uniform")
    assert layout(run_dir)["state"]["weights"] == [0.5, 0.5]
    soup = AutoModelForSequenceClassification.from_pretrained(run_dir / "model" / "soup").state_dict()
    merged = []
    for name in ("m1", "m2"):
        base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
        merged.append(PeftModel.from_pretrained(base, run_dir / "model" / "members" / name).merge_and_unload().state_dict())
    assert not torch.allclose(merged[0]["classifier.weight"], merged[1]["classifier.weight"]), "each its own head"
    for key, value in soup.items():
        assert torch.allclose(value, (merged[0][key] + merged[1][key]) / 2, atol=1e-6), key


def test_soup_members_fork_from_a_trunk_trained_once(runs, tiny_model, classify_files):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    # members that barely move after the fork are the trunk: trained (LoRA moved the encoder), and alike
    member_peak = 1.0e-9
    run_dir = classify_run(runs, classify_files, tiny_model, "soup-trunk", "adapter,soup", "soup.members=2",
                           "soup.mode=uniform", "soup.trunk=0.5", "train.epochs=4", f"soup.options={{lr: [{member_peak}, {member_peak}]}}")
    trunk = layout(run_dir)["state"]["trunk"]
    assert trunk["epochs"] == 2 and trunk["train_seconds"] > 0, "soup.trunk=0.5 of 4 epochs"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert {e["name"]: e["epochs_run"] for e in log if e["event"] == "member"} == {"trunk": 2, "m1": 2, "m2": 2}
    rates = [e["lr"] for e in log if e["event"] == "step" and e["member"] == "trunk"]
    assert 0.3 * max(rates) < rates[-1] < 0.7 * max(rates), "the trunk stops halfway down the run's schedule"
    member = [e for e in log if e["event"] in ("step", "epoch") and e["member"] == "m1"]
    assert sorted({e["epoch"] for e in member}) == [3, 4], "members run the schedule's last 2 epochs"
    peak = json.loads((run_dir / "config.json").read_text())["config"]["train"]["lr"]
    next_rate = (rates[-1] - (rates[-2] - rates[-1])) / peak  # one more step down the trunk's decay
    assert member[0]["lr"] / member_peak == pytest.approx(next_rate, rel=1e-3), "and continue its decay, no new warm-up"
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).state_dict()
    merged = []
    for name in ("m1", "m2"):
        base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
        merged.append(PeftModel.from_pretrained(base, run_dir / "model" / "members" / name).merge_and_unload().state_dict())
    for key, value in merged[0].items():
        assert torch.allclose(value, merged[1][key], atol=1e-5), key
    moved = max((merged[0][k] - v).abs().max().item() for k, v in pretrained.items() if "encoder" in k)
    assert moved > 1e-3, "the members start from the trained trunk, not from the untrained common start"


def test_soup_trunk_needs_epochs_left_for_the_members(runs, tiny_model, classify_files, capsys):
    code = run_cli("run", "--task", "classify", "--train", classify_files["train"], "--model", tiny_model,
                   "--runs-dir", runs, "--name", "soup-no-epochs", "--plugins", "soup",
                   *settings("soup.members=2", "soup.options={epochs: [2, 1]}", "soup.trunk=0.5"))
    assert code == 2
    assert "soup.trunk: member m2 trains 1 epoch(s), not more than the 1 its trunk runs" in capsys.readouterr().err


def test_greedy_soup_keeps_only_members_that_do_not_lower_the_score():
    from fmkit_combine.soup import greedy

    quality = {0: 0.9, 1: 0.8, 2: 0.1, 3: 0.85}
    assert greedy([0, 3, 1, 2], lambda chosen: sum(quality[i] for i in chosen) / len(chosen) + 0.04 * len(chosen)) \
        == [0, 3, 1]


def test_soup_log_likelihood_is_the_mean_log_probability_of_the_gold_labels():
    from fmkit.types import Task
    from fmkit_combine.soup import log_likelihood

    ner = Task("ner", ["O", "B-loc", "I-loc"], scheme="IOB2")
    words = [np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]), np.array([[0.2, 0.2, 0.6]])]
    gold = [["O", "B-loc"], ["B-per"]]  # B-per: a label the model lacks, skipped
    assert log_likelihood(ner, gold, words) == pytest.approx((np.log(0.5) + np.log(0.8)) / 2)
    classify = Task("classify", ["neg", "pos"])
    assert log_likelihood(classify, ["pos", "neg"], [np.array([0.3, 0.7]), np.array([0.9, 0.1])]) \
        == pytest.approx((np.log(0.7) + np.log(0.9)) / 2)


def test_greedy_soup_by_loss_compares_soups_on_dev_log_likelihood(runs, tiny_model, classify_files):
    run_dir = classify_run(runs, classify_files, tiny_model, "soup-loss", "adapter,soup", "soup.members=2",
                           "soup.greedy_by=loss", "soup.trunk=0", "train.epochs=1")
    said = [line for line in (run_dir / "report.txt").read_text().splitlines() if " dev log-likelihood " in line]
    alone = {line.split()[1]: float(line.split()[-1]) for line in said if "+" not in line.split()[1]}
    assert sorted(alone) == ["m1", "m2"] and all(v < 0 for v in alone.values()), "a log-likelihood per member"
    best = max(alone, key=alone.get)
    assert said[2].split()[1].startswith(best + "+"), "the soups grow from the member best on dev"
    pair = float(said[2].split()[-1])
    kept = [0.5, 0.5] if pair >= alone[best] else [float(name == best) for name in ("m1", "m2")]
    assert layout(run_dir)["state"]["weights"] == kept, "the other member joins only if the soup's score holds"


def test_combiners_score_training_rows_in_training_size_batches():
    from types import SimpleNamespace

    from fmkit.members import MemberTrainer

    seen = []
    config = SimpleNamespace(train=SimpleNamespace(batch_size=8, eval_batch_size=64, precision="fp32"))
    fit = object.__new__(MemberTrainer)
    fit.run = SimpleNamespace(config=config, data=SimpleNamespace(train=["t"], dev=["d"]))
    fit.scorer = SimpleNamespace(probabilities=lambda predict, examples, split, rows, batch: seen.append((split, batch)))
    fit.probabilities(None, "train")
    fit.probabilities(None, "dev")
    assert seen == [("train", 8), ("dev", None)], "train.batch_size between members; eval_batch_size otherwise"


def test_hard_and_soft_votes_differ_as_they_should():
    import torch

    from fmkit.types import Member, MemberSpec
    from fmkit_combine.vote import Vote

    class Fixed(torch.nn.Module):
        def __init__(self, probs):
            super().__init__()
            self.logits = torch.log(torch.tensor([probs]))

        def forward(self, **inputs):
            return type("Out", (), {"logits": self.logits})()

    members = [Member(MemberSpec(f"m{i}", i), Fixed(p)) for i, p in enumerate([[0.55, 0.45], [0.55, 0.45], [0.0, 1.0]])]
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long)}
    assert Vote(members, vote="soft").predict_proba(batch).argmax().item() == 1
    assert Vote(members, vote="hard").predict_proba(batch)[0].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert Vote(members, [1, 1, 0], "soft").predict_proba(batch).argmax().item() == 0


def test_the_cascade_asks_the_other_members_only_about_rows_the_first_is_unsure_of():
    import torch

    from fmkit.types import Member, MemberSpec
    from fmkit_combine.vote import Vote

    class ByToken(torch.nn.Module):
        """Logits looked up by token id; remembers the shapes of the batches it was asked about."""

        def __init__(self, table):
            super().__init__()
            self.table, self.seen = torch.log(torch.tensor(table)), []

        def forward(self, input_ids, **inputs):
            self.seen.append(tuple(input_ids.shape))
            return type("Out", (), {"logits": self.table[input_ids]})()

    sure, unsure, other = [0.95, 0.05], [0.6, 0.4], [0.1, 0.9]
    first = ByToken([sure, unsure, sure, sure])  # id 1: the first member is unsure
    rest = [ByToken([other] * 4), ByToken([sure] * 4)]
    members = [Member(MemberSpec(f"m{i}", i), m) for i, m in enumerate([first, *rest])]
    batch = {"input_ids": torch.tensor([[2, 1, 3, 0], [2, 3, 1, 3], [2, 3, 3, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]),
             "word_mask": torch.tensor([[False, False, True, False], [False, True, True, False],
                                        [False, True, False, False]])}
    # row 0 is unsure only where no word is read (position 1): sure; row 1 is unsure at a word; row 2 sure
    whole = Vote(members).predict_proba(batch)
    for m in (first, *rest):
        m.seen.clear()
    cascade = Vote(members, cascade=0.9)
    out = cascade.predict_proba(batch)
    assert first.seen == [(3, 4)] and all(m.seen == [(1, 4)] for m in rest), "only row 1 reaches the others"
    assert torch.allclose(out[1], whole[1]), "an unsure row gets the whole vote"
    assert torch.allclose(out[[0, 2]], torch.softmax(first.table[batch["input_ids"][[0, 2]]], -1))
    assert not torch.allclose(out[0], whole[0]), "a sure row is the first member's alone"
    assert cascade.cascaded == [2, 3]
    del batch["word_mask"]  # a batch built outside fmkit: every real token counts, row 0 is unsure too
    for m in (first, *rest):
        m.seen.clear()
    Vote(members, cascade=0.9).predict_proba(batch)
    assert rest[0].seen == [(2, 4)]
    batch["attention_mask"][0, 1] = 0  # the other members' passes are cut to their rows' longest
    Vote(members, cascade=0.9).predict_proba(batch)
    assert rest[0].seen[-1] == (1, 4)


def test_a_cascade_is_saved_with_the_run_and_spans_first_member_to_whole_vote(bagging_run, ner_files):
    from fmkit.artifacts import load
    from fmkit.data import read_examples
    from fmkit.evaluate import softmax_predictor
    from fmkit_combine.bagging import Bagging

    loaded = load(bagging_run)
    examples = read_examples(loaded.run.config, ner_files["test"])
    vote = loaded.ensemble

    def probabilities(predict):
        return np.concatenate(loaded.scorer.probabilities(predict, examples, "test"))

    whole = probabilities(vote.predict_proba)
    alone = probabilities(softmax_predictor(vote.members[0].model))
    assert not np.allclose(whole, alone, atol=1e-4), "the members differ"
    vote.cascade = 1.0 + 1e-9  # no row is that sure: the whole vote everywhere
    assert np.allclose(probabilities(vote.predict_proba), whole, atol=1e-6)
    vote.cascade = 1e-9  # every row: the first member alone
    assert np.allclose(probabilities(vote.predict_proba), alone, atol=1e-6)
    vote.cascade = 0.9
    restored = Bagging(Bagging.Options()).restore(loaded.run, vote.members, vote.state(), bagging_run / "model")
    assert restored.cascade == 0.9 and restored.state() == vote.state()
    assert Bagging(Bagging.Options()).restore(loaded.run, vote.members, {"weights": [1, 1], "vote": "soft"},
                                              bagging_run).cascade is None, "runs saved before the cascade"


@pytest.mark.parametrize("args, message", [
    (["--plugins", "bagging", "--set", "bagging.members=1"], "bagging.members"),
    (["--plugins", "voting", "--set", "voting.options={lr: [0.1, 0.2]}"], "voting.options.lr has 2 values for 3 members"),
    (["--plugins", "stacking", "--set", "stacking.members=300"], "the training split has only 200 examples"),
])
def test_bad_ensemble_settings_are_one_line_errors(args, message, tiny_model, classify_files, tmp_path, capsys):
    code = run_cli("run", "--task", "classify", "--train", classify_files["train"], "--dev", classify_files["dev"],
                   "--model", tiny_model, "--runs-dir", tmp_path, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("fmkit: error:")
    assert not list(tmp_path.iterdir()), "nothing trained or left behind"


def test_a_vote_of_whole_models_is_attacked_with_one_perturbation_of_the_input(tiny_model):
    """Full fine-tuned members each embed tokens with their own matrix: the vote adds the attack's one
    perturbation to each member's own embedding. A vote of two copies of a model is then attacked exactly
    as the model alone."""
    import copy

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from fmkit_combine.soft_vote_model import SoftVoteModel
    from fmkit_harden.pgd import PGD

    model = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=3).eval()
    vote = SoftVoteModel([model, copy.deepcopy(model)], [0.5, 0.5])
    assert vote.get_input_embeddings() is not model.get_input_embeddings(), "its own lookup, remembering the ids"
    batch = dict(AutoTokenizer.from_pretrained(tiny_model)(["alice went to rome", "bob"], padding=True,
                                                         return_tensors="pt"))
    batch["labels"] = torch.randint(0, 3, batch["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    attack = PGD(PGD.Options(epsilon=0.05)).fmkit_harden(run=None)
    alone, voted = attack.attack(model, batch), attack.attack(vote, batch)
    assert torch.allclose(torch.log_softmax(alone, -1), voted, atol=1e-5)
    clean = vote(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(clean, voted, atol=1e-3), "the attack changed the vote's input"
