"""Harden plugins on the tiny model: the perturbation's geometry, that the attack hurts, what each
training step costs, a new technique as one subclass, that an adapter keeps everything else frozen, image
inputs through torchattacks, robust metrics from `fmkit run` and `fmkit eval --attack`, and one-line errors."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fmkit.cli import main
from fmkit.plugin import FmkitError, model_inputs, task_loss
from fmkit.testing import FAST_TRAIN
from fmkit_harden.attack import AttackOptions, AttackSettings, HardenPlugin
from fmkit_harden.embeddings import perturbable
from fmkit_harden.fgsm import FGSM
from fmkit_harden.freelb import FreeLB
from fmkit_harden.pgd import PGD


def hardener(cls, **options):
    plugin = cls(cls.Options(**options))
    plugin.name = cls.name
    return plugin.fmkit_harden(run=None)


def token_model(path, labels=5):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(path, num_labels=labels).eval()


@pytest.fixture(scope="module")
def batch(tiny_model):
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(tiny_model)(["alice went to new york today", "bob saw rome"],
                                                   padding=True, return_tensors="pt")
    labels = torch.randint(0, 5, enc["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    return {**enc, "labels": labels.masked_fill(enc["attention_mask"] == 0, -100)}


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_perturbation_has_the_configured_norm_and_spares_padding_and_special_tokens(tiny_model, batch, norm):
    eps = 0.2 if norm == "l2" else 0.02
    attack = hardener(PGD, epsilon=eps, norm=norm).embedding_attack
    model = token_model(tiny_model)
    keep = perturbable(batch)
    assert keep.sum() == 9 and not keep[:, 0].any()  # 6 + 3 words: no CLS, SEP or padding
    zero = torch.zeros((*batch["input_ids"].shape, model.config.hidden_size))
    one_step = attack.walk(model, batch, zero, eps, [0.0], None)[0]  # FGSM: straight to the boundary
    evaluation = attack.perturbation(model, batch)  # PGD-10, projected
    size = (lambda d: d.norm(dim=-1)) if norm == "l2" else (lambda d: d.abs().amax(dim=-1))
    assert torch.allclose(size(one_step)[keep], torch.full((9,), eps), atol=1e-5)
    assert size(evaluation)[keep].max() <= eps + 1e-5 and size(evaluation)[keep].mean() > 0.9 * eps
    assert not one_step[~keep].any() and not evaluation[~keep].any()


@pytest.mark.parametrize("kind", ["ner", "classify"])
def test_loss_under_attack_is_higher_than_the_clean_loss(tiny_model, batch, kind):
    from transformers import AutoModelForSequenceClassification

    if kind == "ner":
        model = token_model(tiny_model)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
        batch = {**batch, "labels": torch.tensor([0, 2])}
    h = hardener(PGD, epsilon=0.3, adv_weight=1.0)
    with torch.inference_mode():  # as evaluation calls it
        clean = task_loss(model(**model_inputs(batch)).logits, batch)
        attacked = task_loss(h.attack(model, batch), batch)
    trained_on = h.train_step(model, batch, lambda loss: loss.backward())
    assert attacked > clean and trained_on > clean, (clean, attacked, trained_on)  # an ascent, not a descent


@pytest.mark.parametrize(("cls", "options", "passes", "backwards"), [
    (FGSM, {}, 2, 2),  # the clean pass's backward gives the direction: 2x a clean step at most
    (FGSM, {"random_init": True}, 3, 2),  # the random start needs its own (input-gradient-only) pass
    (PGD, {"steps": 3}, 4, 2),  # clean (+ first direction), 2 input-gradient-only ascents, adversarial
    (FreeLB, {"steps": 3}, 3, 3),  # every pass trains the parameters and moves the perturbation
])
def test_passes_per_training_step(tiny_model, batch, cls, options, passes, backwards):
    model = token_model(tiny_model)
    forwards, seen = [], []
    model.register_forward_hook(lambda *_: forwards.append(1))
    loss = hardener(cls, epsilon=0.2, **options).train_step(model, batch, lambda l: (seen.append(1), l.backward()))
    assert (len(forwards), len(seen)) == (passes, backwards)
    assert loss.requires_grad is False and loss > 0



class RandomStep(HardenPlugin):
    """A technique the family does not ship, defined here: always one ascent step from a random point of
    the ball, then the point it reaches trains. Its settings and schedule are its own; no module of
    fmkit_harden knows it."""

    name = "random-step"
    Options = AttackOptions

    def settings(self) -> AttackSettings:
        return replace(super().settings(), random_init=True)

    def pass_weights(self, settings: AttackSettings) -> list[float]:
        return [0.0, settings.adv_weight]


def test_a_new_technique_is_one_subclass_with_its_own_schedule(tiny_model, batch):
    model = token_model(tiny_model)
    forwards, seen = [], []
    model.register_forward_hook(lambda *_: forwards.append(1))
    h = hardener(RandomStep, epsilon=0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = h.train_step(model, batch, lambda l: (seen.append(1), l.backward()))
    # the clean loss's own pass (random start), the start (input gradient only), the point it reaches
    assert (len(forwards), len(seen)) == (3, 2) and loss.requires_grad is False and loss > 0
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    with torch.inference_mode():  # the evaluation attack comes with the base class
        clean = task_loss(model(**model_inputs(batch)).logits, batch)
        assert task_loss(h.attack(model, batch), batch) > clean


@pytest.mark.parametrize(("cls", "options"), [(FGSM, {}), (PGD, {}), (FreeLB, {}), (FGSM, {"random_init": True})])
def test_one_embedding_lookup_per_step_gives_the_gradients_of_one_per_pass(tiny_model, batch, cls, options):
    """The step's passes share one embedding lookup, whose backward runs once on their summed input
    gradients; the parameters get the gradients they get when every pass looks the tokens up itself."""
    model = token_model(tiny_model).train()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    attack = hardener(cls, **options).embedding_attack

    def gradients(step) -> dict:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same random start
        step()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared = gradients(lambda: attack.train_step(model, batch, lambda loss: loss.backward()))
    per_pass = gradients(lambda: per_pass_step(attack, model, batch))
    assert shared.keys() == per_pass.keys() and "bert.embeddings.word_embeddings.weight" in shared
    for name in shared:
        assert torch.allclose(shared[name], per_pass[name], atol=1e-6), name
    assert shared["bert.embeddings.word_embeddings.weight"].abs().sum() > 0


def per_pass_step(attack, model, batch) -> None:
    """``train_step`` as it was before the lookup was shared: every pass looks the embeddings up itself."""
    r, backward = attack.settings, (lambda loss: loss.backward())
    clean = 1.0 - r.adv_weight
    weights = list(attack.pass_weights)
    with torch.no_grad():
        like = model.get_input_embeddings()(batch["input_ids"])
    delta = attack.start(like, batch, random=r.random_init)
    if clean and r.random_init:
        attack.walk(model, batch, delta * 0, 0.0, [clean], backward)
    elif clean:
        weights[0] += clean
    attack.walk(model, batch, delta, r.step_size, weights, backward)


def test_training_under_an_adapter_changes_only_the_adapter(tiny_model, batch):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(token_model(tiny_model), LoraConfig(task_type="TOKEN_CLS", r=4, target_modules=["query", "value"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    h = hardener(PGD, epsilon=0.3, adv_weight=1.0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        h.train_step(model, batch, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "classifier" in n for n in changed), changed
    assert any("lora_A" in n for n in changed), "the adapter itself trained, not only the head"
    with torch.inference_mode():  # the embeddings are frozen, yet the perturbation bites
        assert task_loss(h.attack(model, batch), batch) > task_loss(model(**model_inputs(batch)).logits, batch)


class StandIn(nn.Module):
    """The agreed multimodal contract in miniature: text (ids or embeddings), pixels in [0, 1] and
    features -> an object with (N, C) ``.logits``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.image, self.table = nn.Embedding(60, 8), nn.Linear(3 * 4 * 4, 8), nn.Linear(2, 8)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 3))

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, pixel_values=None, features=None):
        text = (self.embed(input_ids) if inputs_embeds is None else inputs_embeds).mean(dim=1)
        return SimpleNamespace(logits=self.head(torch.tanh(text + 4 * self.image(pixel_values.flatten(1)) + self.table(features))))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_image_inputs_are_attacked_with_torchattacks(norm):
    model = StandIn().eval()
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 60, (6, 5), generator=generator), "attention_mask": torch.ones(6, 5, dtype=torch.long),
             "pixel_values": torch.rand(6, 3, 4, 4, generator=generator), "features": torch.randn(6, 2, generator=generator),
             "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    h = hardener(PGD, norm=norm, pixel_epsilon=0.1)
    pixels = h.attack_for(batch).adversarial(model, batch, training=False)["pixel_values"]
    moved = (pixels - batch["pixel_values"]).flatten(1)
    assert 0 <= pixels.min() and pixels.max() <= 1
    assert (moved.abs().amax(dim=1) if norm == "linf" else moved.norm(dim=1)).max() <= 0.1 + 1e-5
    with torch.inference_mode():
        clean = task_loss(model(**model_inputs(batch)).logits, batch)
        assert task_loss(h.attack(model, batch), batch) > clean
    model.train()
    loss = h.train_step(model, batch, lambda l: l.backward())
    assert model.training and loss > 0 and model.image.weight.grad.abs().sum() > 0  # torchattacks restored the mode
    with pytest.raises(FmkitError, match="no FreeLB"):
        hardener(FreeLB).train_step(model, batch, lambda l: l.backward())


def test_model_without_reachable_embeddings_is_a_one_line_error(batch):
    with pytest.raises(FmkitError) as info:
        hardener(FGSM).train_step(nn.Linear(4, 2), batch, lambda l: l.backward())
    assert "fgsm: Linear exposes no input embeddings" in str(info.value) and "\n" not in str(info.value)


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def hardened_run(tiny_model, ner_files, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    fast = [*FAST_TRAIN, "train.epochs=4", "train.lr=5e-3", "fgsm.epsilon=0.3"]
    settings = [x for s in fast for x in ("--set", s)]
    code = cli("run", "--train", ner_files["train"], "--dev", ner_files["dev"], "--test", ner_files["test"],
               "--model", tiny_model, "--runs-dir", runs, "--name", "fgsm", "--plugins", "fgsm", *settings)
    assert code == 0
    return runs / "fgsm"


def test_run_reports_clean_and_robust_metrics(hardened_run, ner_files, capsys):
    metrics = json.loads((hardened_run / "metrics.json").read_text())
    robust = metrics["robust"]["fgsm"]["test"]
    assert metrics["test"]["f1"] >= 0.5, metrics["test"]  # learned enough for the attack to have something to break
    assert robust["f1"] < metrics["test"]["f1"] and 0 < robust["attack_success_rate"] <= 1
    assert metrics["members"]["model"]["robust"] == metrics["robust"]
    notes = (hardened_run / "report.txt").read_text()  # what the run said while it evaluated, in order
    assert notes.index("evaluating on dev (") < notes.index("evaluating under the fgsm attack on test (")
    capsys.readouterr()
    assert cli("eval", hardened_run, "--data", ner_files["test"], "--attack", "pgd", "--set", "pgd.epsilon=0.3") == 0
    table = capsys.readouterr().out
    assert "attack success" in table and f"{ner_files['test']} under pgd" in table
    assert cli("eval", hardened_run, "--data", ner_files["test"], "--attack", "fgsm", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["f1"] == pytest.approx(metrics["test"]["f1"])
    assert result["robust"]["fgsm"] == pytest.approx(robust), "the saved training options make the same attack"


@pytest.mark.parametrize(("args", "message"), [
    (["--plugins", "pgd", "--set", "pgd.epsilon=0"], "option pgd.epsilon: Input should be greater than 0"),
    (["--plugins", "freelb", "--set", "freelb.steps=0"], "option freelb.steps: Input should be greater than or equal to 1"),
])
def test_bad_options_fail_before_training(args, message, ner_files, tiny_model, tmp_path, capsys):
    code = cli("run", "--train", ner_files["train"], "--model", tiny_model, "--runs-dir", tmp_path, "--name", "bad", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--attack", "full"], "--attack full: not a harden plugin (it serves the adapt stage)"),
    (["--attack", "pgd", "--set", "train.epochs=2"], "eval takes options of the --attack plugin only"),
    (["--set", "pgd.steps=2"], "add --attack NAME"),
    (["--attack", "pgd", "--set", "pgd.steps=0"], "option pgd.steps: Input should be greater than or equal to 1"),
])
def test_bad_eval_attack_is_one_line(args, message, hardened_run, ner_files, capsys):
    capsys.readouterr()
    assert cli("eval", hardened_run, "--data", ner_files["test"], *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
