"""Image inputs: the harden techniques attack ``pixel_values`` (floats in [0, 1]) with torchattacks.

torchattacks wants a model that maps one tensor in [0, 1] to (N, C) logits; ``PixelClassifier``
is that view of a fused multimodal model, holding the batch's text and features fixed.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fmkit.plugin import Batch, model_inputs, task_loss
from fmkit_harden.attack import AttackSettings, gradients_on


class PixelClassifier(nn.Module):
    """pixels -> logits of ``model`` on ``inputs`` with those pixels (what torchattacks attacks)."""

    def __init__(self, model: nn.Module, inputs: dict):
        super().__init__()
        self.model = model
        self.inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(**self.inputs, pixel_values=pixels).logits


class PixelAttack:
    """``fgsm`` / ``pgd`` on images: torchattacks ``PGD`` (linf; one step of size epsilon is exactly
    its ``FGSM``) or ``PGDL2`` (l2 per image), with radius ``pixel_epsilon``."""

    def __init__(self, settings: AttackSettings):
        self.settings = settings

    def attacker(self, model: nn.Module, inputs: dict, training: bool) -> Any:
        """The torchattacks attack: the training walk, or the (stronger) evaluation one from the clean image."""
        import torchattacks

        s = self.settings
        eps = s.pixel_epsilon
        if training:  # step sizes scale with the radius: the text settings carry over
            steps, alpha, random_start = s.steps, s.step_size * eps / s.epsilon, s.random_init
        else:
            steps, alpha, random_start = s.eval_steps, s.eval_step_size * eps / s.epsilon, False
        kind = torchattacks.PGD if s.norm == "linf" else torchattacks.PGDL2
        return kind(PixelClassifier(model, inputs), eps=eps, alpha=alpha, steps=steps, random_start=random_start)

    def adversarial(self, model: nn.Module, batch: Batch, training: bool) -> dict:
        """The model inputs with attacked pixels (torchattacks runs the model in eval mode meanwhile)."""
        inputs = model_inputs(batch)
        pixels = self.attacker(model, inputs, training)(inputs["pixel_values"], batch["labels"])
        return {**inputs, "pixel_values": pixels}

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        w = self.settings.adv_weight
        total = torch.zeros((), device=batch["labels"].device)
        if w < 1:
            clean = task_loss(model(**model_inputs(batch)).logits, batch)
            backward(clean * (1 - w))
            total = total + (1 - w) * clean.detach()
        adversarial = task_loss(model(**self.adversarial(model, batch, training=True)).logits, batch)
        backward(adversarial * w)
        return total + w * adversarial.detach()

    def attack(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with gradients_on(batch) as batch:
            inputs = self.adversarial(model, batch, training=False)
            with torch.no_grad():
                return model(**inputs).logits
