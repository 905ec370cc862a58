"""The embedding-space engine behind every harden technique on text: its primitives (the start point,
the walk with per-pass loss weights, the projected ascent step, the evaluation attack) and the
training step that follows a technique's schedule.

It perturbs ``inputs_embeds`` (the looked-up token vectors), never the embedding weight matrix:
perturbing the weights does nothing when an adapter freezes them, and leaks into every sentence
that shares a token. Padding and the special tokens that frame every window are never perturbed.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable, Sequence

from fmkit.plugin import Batch, FmkitError, model_inputs, task_loss
from fmkit_harden.attack import AttackSettings, gradients_on

if TYPE_CHECKING:
    import torch
    from torch import nn


def input_embedding(model: nn.Module, plugin: str) -> nn.Module:
    """The model's token-embedding layer, or a one-line error when there is none to perturb."""
    from torch import nn

    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    try:
        layer = base.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        layer = None
    params = inspect.signature(base.forward).parameters
    takes_embeds = "inputs_embeds" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not isinstance(layer, nn.Module) or not takes_embeds:
        raise FmkitError(f"{plugin}: {type(base).__name__} exposes no input embeddings to perturb "
                         "(needs get_input_embeddings() and forward(inputs_embeds=...)); drop the plugin or "
                         "choose another model")
    return layer


def perturbable(batch: Batch) -> torch.Tensor:
    """(N, T) bool: real tokens other than the special ones every window starts or ends with
    (CLS/SEP, <s>/</s>: the id that all rows share in first or in last position)."""
    ids, keep = batch["input_ids"], batch["attention_mask"].bool()
    last = (keep.sum(dim=1) - 1).clamp(min=0)
    for edge in (ids[:, 0], ids.gather(1, last[:, None]).squeeze(1)):
        if bool((edge == edge[0]).all()):
            keep = keep & (ids != edge[0])
    return keep


class EmbeddingAttack:
    """Gradient ascent on the input embeddings inside an epsilon ball per token (l2) or per
    coordinate (linf). A training step walks with the technique's ``pass_weights`` and trains on the
    mix ``(1 - adv_weight) * clean + (the weighted adversarial losses)``."""

    def __init__(self, settings: AttackSettings, pass_weights: Sequence[float]):
        self.settings = settings
        self.pass_weights = tuple(pass_weights)

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        s = self.settings
        clean = 1.0 - s.adv_weight
        weights = list(self.pass_weights)
        lookup = EmbeddingLookup(model, batch, s.name)
        total = 0.0
        delta = self.start(lookup.like, batch, random=s.random_init)
        if clean and s.random_init:  # the walk does not start at the clean point: one more pass for it
            total = self.walk(model, batch, delta * 0, 0.0, [clean], backward, lookup)[1]
        elif clean:  # it does: the clean pass's backward also gives the first ascent direction, free
            weights[0] += clean
        total = total + self.walk(model, batch, delta, s.step_size, weights, backward, lookup)[1]
        lookup.backward()
        return total

    def attack(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Logits under the evaluation attack: PGD with ``eval_steps`` from the clean point."""
        import torch

        with gradients_on(batch) as batch:
            delta = self.perturbation(model, batch)
            with torch.no_grad():
                return self.logits(model, batch, delta)

    def perturbation(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The evaluation attack's perturbation of ``inputs_embeds``, (N, T, H)."""
        import torch

        s = self.settings
        with gradients_on(batch) as batch:
            with torch.no_grad():  # the weights are not trained here: one lookup serves every step
                lookup = EmbeddingLookup(model, batch, s.name)
            start = self.start(lookup.like, batch, random=False)
            return self.walk(model, batch, start, s.eval_step_size, [0.0] * s.eval_steps, None, lookup)[0]

    def start(self, like: torch.Tensor, batch: Batch, random: bool) -> torch.Tensor:
        """Zero, or uniform in the ball (linf: per coordinate; l2: random direction and radius per token)."""
        import torch

        s = self.settings
        delta = torch.zeros_like(like)
        if random and s.norm == "linf":
            delta.uniform_(-s.epsilon, s.epsilon)
        elif random:
            delta.normal_()
            radius = torch.rand_like(delta[..., :1]) * s.epsilon
            delta = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12) * radius
        return delta * perturbable(batch)[..., None]

    def walk(self, model: nn.Module, batch: Batch, delta: torch.Tensor, step_size: float, weights: Sequence[float],
             backward: Callable[[torch.Tensor], None] | None,
             lookup: EmbeddingLookup | None = None) -> tuple[torch.Tensor, torch.Tensor | float]:
        """One forward pass per weight, each followed by an ascent step; a pass with a positive weight
        trains the parameters on ``weight * loss`` through the same backward that gives the ascent
        direction, a zero-weight pass computes the input gradient only. Returns the final
        perturbation and the weighted loss, detached."""
        import torch

        keep = perturbable(batch)[..., None]
        total: torch.Tensor | float = 0.0
        for weight in weights:
            delta = delta.detach().requires_grad_(True)
            loss = task_loss(self.logits(model, batch, delta, lookup), batch)
            if weight > 0:
                backward(loss * weight)
                grad = delta.grad
                total = total + weight * loss.detach()
                if lookup is not None:
                    lookup.collect(grad)  # the embedding matrix's share, applied once by lookup.backward()
            else:
                (grad,) = torch.autograd.grad(loss, delta)
            delta = self.ascend(delta.detach(), grad, step_size) * keep
        return delta.detach(), total

    def ascend(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """One step up the loss, projected back into the epsilon ball."""
        eps = self.settings.epsilon
        if self.settings.norm == "linf":
            return (delta + step_size * grad.sign()).clamp(-eps, eps)
        delta = delta + step_size * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return delta * (eps / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)

    def logits(self, model: nn.Module, batch: Batch, delta: torch.Tensor,
               lookup: EmbeddingLookup | None = None) -> torch.Tensor:
        """The model's logits with ``delta`` added to the batch's token embeddings."""
        inputs = model_inputs(batch)
        ids = inputs.pop("input_ids")
        shared = lookup.embeds if lookup is not None else None
        embeds = shared if shared is not None else input_embedding(model, self.settings.name)(ids)
        return model(**inputs, inputs_embeds=embeds + delta.to(embeds.dtype)).logits


class EmbeddingLookup:
    """The token embeddings of a batch, looked up once for every pass of a step.

    The passes see them detached: a pass's gradient with respect to its input equals the one with
    respect to its perturbation (``delta.grad``), so the gradients of the passes that train are summed
    here, and one backward through the lookup at the end of the step gives the embedding matrix its
    gradient, instead of one dense (vocabulary x hidden) gradient per pass. Under
    DistributedDataParallel, whose reducer wants every gradient inside the backward of a pass, each
    pass looks the embeddings up itself (``embeds`` is None)."""

    def __init__(self, model: nn.Module, batch: Batch, plugin: str):
        import torch
        from torch import nn

        looked_up = input_embedding(model, plugin)(batch["input_ids"])
        shared = not isinstance(model, nn.parallel.DistributedDataParallel)
        self.like = looked_up.detach()  # shape, dtype and device of the perturbation
        self.embeds = self.like if shared else None
        self.graph = looked_up if shared and looked_up.requires_grad else None
        self.summed = torch.zeros_like(self.embeds) if self.graph is not None else None

    def collect(self, grad: torch.Tensor) -> None:
        """Add a training pass's input gradient to the step's sum."""
        if self.summed is not None:
            self.summed += grad

    def backward(self) -> None:
        """Give the embedding matrix the step's summed gradient: one backward through the lookup."""
        if self.graph is not None:
            self.graph.backward(self.summed)
