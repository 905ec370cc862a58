"""What every harden technique shares: its options, their resolved settings, the plugin base class
and the Hardener it returns, which sends text batches to the embedding attack and image batches to
the pixel attack."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import Batch, Run, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fmkit_harden.embeddings import EmbeddingAttack
    from fmkit_harden.pixels import PixelAttack

DEFAULT_EPSILON = {"l2": 0.05, "linf": 0.0025}  # MiniLM-L6: token embeddings of norm ~1.1, coordinates ~0.06


class AttackOptions(BaseModel):
    """Settings every harden plugin takes."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float | None = Field(None, gt=0, description="radius of the perturbation of each token's input "
                                  "embedding: its L2 norm, or the bound on every coordinate for linf; none = "
                                  f"{DEFAULT_EPSILON['l2']} for l2, {DEFAULT_EPSILON['linf']} for linf")
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


@dataclass(frozen=True)
class AttackSettings:
    """One harden plugin's options, resolved: defaults and derived step sizes filled in."""

    name: str
    epsilon: float
    step_size: float
    steps: int
    norm: str  # "l2" (per token / per image) or "linf"
    random_init: bool
    adv_weight: float
    eval_steps: int
    pixel_epsilon: float

    @property
    def eval_step_size(self) -> float:
        """Madry et al.'s rule: 2.5 epsilon over the steps, so the walk can reach the boundary."""
        return 2.5 * self.epsilon / self.eval_steps


@contextlib.contextmanager
def gradients_on(batch: Batch) -> Iterator[Batch]:
    """Attacks need input gradients, also inside evaluation's inference mode: yield a copy of the
    batch made outside it (inference tensors cannot be saved for backward)."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}


class HardenPlugin(ABC):
    """A harden technique: options in, an ``AdversarialHardener`` out.

    A subclass sets ``name``, ``Options`` and a docstring (what ``fmkit plugins show`` prints) and
    states its training schedule in ``pass_weights``; it may change the step-size rule
    (``default_step_size``) and refuse image inputs (``pixel_attack``)."""

    stage = "harden"
    name: str
    Options: type[AttackOptions]
    # fp32 training under train.precision=auto: bf16 autocast was measured on clean fine-tuning only
    # (README, Performance); the attacks' step sizes and epsilons were tuned, and their results measured, in fp32
    train_defaults = {"precision": "no"}

    def __init__(self, options: AttackOptions):
        self.options = options

    @abstractmethod
    def pass_weights(self, settings: AttackSettings) -> list[float]:
        """The training schedule: the adversarial loss weight of each forward pass of a step.

        Pass i runs at the i-th point of the walk (its start, then the point after each ascent step).
        A zero weight only moves the perturbation (input gradient only); a positive one also trains
        the parameters on ``weight * loss``, through the backward that gives the ascent direction.
        The engine adds the clean loss (``1 - adv_weight``): folded into the first pass when the walk
        starts at the clean input, a pass of its own after a random start."""

    def steps(self) -> int:
        """Ascent steps per training batch: the ``steps`` option of techniques that have one, else 1."""
        return getattr(self.options, "steps", 1)

    def default_step_size(self, epsilon: float) -> float:
        """The ascent step when ``step_size`` is not set: 2.5 epsilon over the steps (Madry et al.)."""
        return 2.5 * epsilon / self.steps()

    def settings(self) -> AttackSettings:
        """The options with their defaults resolved: epsilon by norm, the step size by this technique's rule."""
        o = self.options
        eps = o.epsilon or DEFAULT_EPSILON[o.norm]
        return AttackSettings(name=self.name, epsilon=eps, step_size=o.step_size or self.default_step_size(eps),
                              steps=self.steps(), norm=o.norm, random_init=o.random_init, adv_weight=o.adv_weight,
                              eval_steps=o.eval_steps or max(10, 2 * self.steps()), pixel_epsilon=o.pixel_epsilon)

    def pixel_attack(self, settings: AttackSettings) -> PixelAttack:
        """The attack for image batches: torchattacks walks ``steps`` ascents and the point it reaches
        trains (the fgsm/pgd schedule, not ``pass_weights``); a technique it cannot express refuses here."""
        from fmkit_harden.pixels import PixelAttack  # torch and torchattacks: only for image batches

        return PixelAttack(settings)

    @hookimpl
    def fmkit_harden(self, run: Run) -> AdversarialHardener:
        return AdversarialHardener(self)

    @hookimpl
    def fmkit_plan(self, run: Run) -> list[str]:
        """What a training step and the evaluation attack cost, in passes through the model."""
        settings = self.settings()
        weights = self.pass_weights(settings)
        clean_pass = settings.random_init and settings.adv_weight < 1  # a random start needs its own clean pass
        forwards = len(weights) + clean_pass
        into_parameters = sum(w > 0 for w in weights) + clean_pass + (not settings.random_init and weights[0] == 0)
        return [f"every training batch: {forwards} forward passes, each with a backward, {into_parameters} of them "
                "into the parameters (clean training: 1 and 1), "
                f"epsilon {settings.epsilon:g} ({settings.norm}); robust evaluation: PGD-{settings.eval_steps} on "
                "the test split, a forward and a backward pass per step"]


class AdversarialHardener:
    """The Hardener every technique returns: its training step and the evaluation attack, on input
    embeddings for text batches and on pixels for image batches (``pixel_values``)."""

    def __init__(self, technique: HardenPlugin):
        from fmkit_harden.embeddings import EmbeddingAttack  # imports this module: not at module level

        self.name = technique.name
        self.technique = technique
        self.settings = technique.settings()
        self.embedding_attack = EmbeddingAttack(self.settings, technique.pass_weights(self.settings))
        self._pixel_attack: PixelAttack | None = None

    def attack_for(self, batch: Batch) -> EmbeddingAttack | PixelAttack:
        """The attack that perturbs this batch: its pixels when it has images, else its token embeddings."""
        if "pixel_values" not in batch:
            return self.embedding_attack
        if self._pixel_attack is None:
            self._pixel_attack = self.technique.pixel_attack(self.settings)
        return self._pixel_attack

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        return self.attack_for(batch).train_step(model, batch, backward)

    def attack(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.attack_for(batch).attack(model, batch)
