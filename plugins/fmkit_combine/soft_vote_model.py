"""The soft vote as one differentiable model, for attacks on the combination itself (imports torch:
loaded only when a run evaluates under attack)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class SoftVoteModel(nn.Module):
    """The weighted soft vote as one differentiable model, for attacks on the combination itself: its
    ``logits`` are the log of the vote's probabilities, so an attack on it maximises the ensemble's own
    loss. Needs members that share one input-embedding layer (adapters on one backbone)."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.models = list(models)  # a plain list: the members stay owned by the ensemble, not registered twice
        self.weights = list(weights)
        # An attack's backward holds every member's activations at once: robust evaluation attacks a batch
        # in this many slices, so it needs one member's memory (slices are attacked independently anyway).
        self.attack_slices = len(self.models)

    @classmethod
    def of(cls, models: Sequence[nn.Module], weights: Sequence[float]) -> SoftVoteModel | None:
        """The vote as a model, or None when members embed their tokens differently (full fine-tuning):
        one perturbation of the input embeddings would then mean a different input to each member."""
        layers = {id(m.get_input_embeddings()) for m in models if hasattr(m, "get_input_embeddings")}
        return cls(models, weights) if len(layers) == 1 else None

    def get_input_embeddings(self) -> nn.Module:
        return self.models[0].get_input_embeddings()

    def forward(self, **inputs: Any) -> Any:
        from types import SimpleNamespace

        probs = sum(w * torch.softmax(m(**inputs).logits.float(), dim=-1) for m, w in zip(self.models, self.weights))
        return SimpleNamespace(logits=torch.log(probs.clamp_min(1e-12)))
