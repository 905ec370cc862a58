"""Learning rates per part: ``train.lr`` for the pretrained backbone (and adapters inside it),
``train.new_lr`` for the modules a ModelBuilder marks new (a text model's head, fusion modules); without
``new_lr`` the optimizer is the one-rate optimizer it always was."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from fmkit.cli import main
from fmkit.config import TrainConfig
from fmkit.model import TextModelBuilder, mark_new, new_parameters
from fmkit.plugin import Foundation, Task
from fmkit.testing import FAST_TRAIN
from fmkit.train import parameter_groups


@pytest.fixture
def text_model(tiny_model):
    return TextModelBuilder(Foundation(str(tiny_model), None), Task("classify", ["neg", "pos"])).build()


def rates(model, settings):
    """{parameter name: (lr, weight decay)} as the optimizer groups set them."""
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in parameter_groups(model, trainable, settings)
            for p in g["params"]}


def test_without_new_lr_one_rate_in_the_two_usual_groups(text_model):
    settings = TrainConfig(lr=2e-4)
    trainable = list(text_model.parameters())
    groups = parameter_groups(text_model, trainable, settings)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(2e-4, 0.01), (2e-4, 0.0)]
    assert groups[0]["params"] == [p for p in trainable if p.ndim >= 2]  # the order of before, too
    assert groups[1]["params"] == [p for p in trainable if p.ndim < 2]


def test_the_text_models_new_head_takes_new_lr_and_its_encoder_lr(text_model):
    got = rates(text_model, TrainConfig(lr=1e-5, new_lr=1e-3))
    assert got["classifier.weight"] == (1e-3, 0.01) and got["classifier.bias"] == (1e-3, 0.0)
    assert got["bert.encoder.layer.0.attention.self.query.weight"] == (1e-5, 0.01)
    assert {rate for name, (rate, _) in got.items() if not name.startswith("classifier.")} == {1e-5}
    copied = copy.deepcopy(text_model)  # ensemble members are copies: the marks come along
    assert len(new_parameters(copied)) == 2


def test_adapters_train_at_lr_and_the_heads_copy_at_new_lr(text_model):
    """PEFT wraps the model: LoRA weights land inside the backbone (train.lr, the rate the adapter plugin
    sets), the head's trainable copy (modules_to_save) keeps the head's mark (train.new_lr)."""
    import peft

    model = peft.get_peft_model(text_model, peft.LoraConfig(target_modules=["query", "value"],
                                                            modules_to_save=["classifier"]))
    got = rates(model, TrainConfig(lr=2e-3, new_lr=5e-3))
    lora = {rate for name, (rate, _) in got.items() if "lora_" in name}
    head = {rate for name, (rate, _) in got.items() if "modules_to_save" in name}
    assert lora == {2e-3} and head == {5e-3} and len(got) > 2


def test_a_pretrained_module_inside_a_new_one_keeps_lr():
    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    mark_new(outer)
    mark_new(outer[1], new=False)
    assert new_parameters(outer) == {id(p) for p in outer[0].parameters()}


def test_a_run_with_new_lr_moves_the_head_and_leaves_a_frozen_rate_encoder(tiny_model, classify_files, tmp_path):
    """End to end: at a vanishing ``train.lr`` the encoder's weights stay as pretrained while the head learns."""
    settings = [*FAST_TRAIN, "train.epochs=2", "train.lr=1e-12", "train.new_lr=1e-2"]
    assert main(["run", "--task", "classify", "--model", str(tiny_model), "--train", str(classify_files["train"]),
                 "--dev", str(classify_files["dev"]), "--runs-dir", str(tmp_path), "--name", "r",
                 *[x for s in settings for x in ("--set", s)]]) == 0
    trained = load_file(tmp_path / "r" / "model" / "model.safetensors")
    pretrained = load_file(tiny_model / "model.safetensors")
    assert all(torch.allclose(trained[f"bert.{k}"], v, atol=1e-6) for k, v in pretrained.items()
               if f"bert.{k}" in trained and "pooler" not in k)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["dev"]["accuracy"] > 0.5
