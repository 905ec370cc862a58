"""Adversarial training and robust evaluation, harden stage: ``fgsm``, ``pgd`` and ``freelb``.

Text is attacked in embedding space (``embeddings.py``), images through torchattacks
(``pixels.py``). Each plugin's Hardener also defines the attack that robust evaluation uses:
PGD from the clean input with more steps than training (``eval_steps``).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

import fmkit
from fmkit.types import Run
from fmkit_adversarial.common import Recipe
from fmkit_adversarial.embeddings import EmbeddingAttack

EPSILON = {"l2": 0.05, "linf": 0.0025}  # MiniLM-L6: token embeddings of norm ~1.1, coordinates ~0.06


class AttackOptions(BaseModel):
    """Settings every harden plugin takes."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float | None = Field(None, gt=0, description="radius of the perturbation of each token's input "
                                  "embedding: its L2 norm, or the bound on every coordinate for linf; none = "
                                  f"{EPSILON['l2']} for l2, {EPSILON['linf']} for linf")
    norm: Literal["l2", "linf"] = Field("l2", description="l2: a ball per token; linf: a box per coordinate")
    step_size: float | None = Field(None, gt=0, description="ascent step; none = the plugin's rule (see its doc)")
    random_init: bool = Field(False, description="start the ascent at a random point of the ball instead of the "
                              "clean input (then the clean loss needs a pass of its own)")
    adv_weight: float = Field(0.5, gt=0, le=1, description="weight of the adversarial loss; the clean loss gets "
                              "1 - adv_weight")
    eval_steps: int | None = Field(None, ge=1, description="steps of the evaluation attack (PGD from the clean "
                                   "input, step 2.5*epsilon/eval_steps); none = max(10, 2*steps)")
    pixel_epsilon: float = Field(8 / 255, gt=0, le=1, description="image inputs: the radius in pixel units "
                                 "(pixels in [0, 1]); steps scale by pixel_epsilon/epsilon")


class StepsOptions(AttackOptions):
    steps: int = Field(3, ge=1, description="ascent steps per training batch")


class PGDOptions(StepsOptions):
    steps: int = Field(2, ge=1, description="ascent steps per training batch (2: a fifth cheaper than 3, which "
                       "keeps the 5-member pgd+bagging headline under 15 CPU minutes; docs/ensembles.md)")


class Adversarial:
    """The Hardener the plugins return: embedding attack for text, torchattacks for image batches."""

    def __init__(self, recipe: Recipe):
        self.name = recipe.name
        self.recipe = recipe
        self.text = EmbeddingAttack(recipe)
        self._pixels: Any = None

    def space(self, batch: dict) -> Any:
        if "pixel_values" not in batch:
            return self.text
        if self._pixels is None:
            from fmkit_adversarial.pixels import PixelAttack

            self._pixels = PixelAttack(self.recipe)
        return self._pixels

    def train_step(self, model: Any, batch: dict, backward: Callable[[Any], None]) -> Any:
        return self.space(batch).train_step(model, batch, backward)

    def attack(self, model: Any, batch: dict) -> Any:
        return self.space(batch).attack(model, batch)


class _Harden:
    """Shared plugin shape: options in, a Hardener out."""

    stage = "harden"
    accumulate = False

    def __init__(self, options: AttackOptions):
        self.options = options

    def steps(self) -> int:
        return getattr(self.options, "steps", 1)

    def default_step_size(self, epsilon: float) -> float:
        return 2.5 * epsilon / self.steps()

    def recipe(self) -> Recipe:
        o = self.options
        eps = o.epsilon or EPSILON[o.norm]
        return Recipe(name=self.name, epsilon=eps, step_size=o.step_size or self.default_step_size(eps),
                      steps=self.steps(), norm=o.norm, random_init=o.random_init, adv_weight=o.adv_weight,
                      accumulate=self.accumulate, eval_steps=o.eval_steps or max(10, 2 * self.steps()),
                      pixel_epsilon=o.pixel_epsilon)

    @fmkit.hookimpl
    def fmkit_harden(self, run: Run) -> Adversarial:
        return Adversarial(self.recipe())


class FGSM(_Harden):
    """FGSM: one gradient step to the edge of the ball, on input embeddings or pixels.

    Goodfellow et al. 2015; Miyato et al. 2017 for embeddings. Two passes per batch: the clean
    pass's backward gives the direction. With random_init it is "fast" adversarial training
    (Wong et al. 2020; step 1.25*epsilon)."""

    name = "fgsm"
    Options = AttackOptions

    def default_step_size(self, epsilon: float) -> float:
        return (1.25 if self.options.random_init else 1.0) * epsilon


class PGD(_Harden):
    """PGD: several projected ascent steps, then train on the point they reach.

    Madry et al. 2018: ``steps`` ascents of 2.5*epsilon/steps. The first ascent reuses the clean
    pass's backward; the others compute input gradients only (no parameter gradients)."""

    name = "pgd"
    Options = PGDOptions


class FreeLB(_Harden):
    """FreeLB: train on every point of the ascent, each backward doing double duty.

    Zhu et al. 2020: ``steps`` passes; each backward both moves the perturbation and adds its share
    of the parameter gradients ("free" adversarial training, Shafahi et al. 2019, inside one
    optimizer step). Text only: torchattacks has no FreeLB for images."""

    name = "freelb"
    Options = StepsOptions
    accumulate = True
