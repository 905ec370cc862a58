"""The soft vote as one differentiable model, for attacks on the combination itself (imports torch:
loaded only when a run evaluates under attack)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class RememberingLookup(nn.Module):
    """The vote's token embedding when members embed tokens differently (full fine-tuning): the first
    member's lookup, which remembers the ids it was given, so that the vote can add the one perturbation
    an attack makes to every member's own embedding of those ids."""

    def __init__(self, first: nn.Module):
        super().__init__()
        self.__dict__["first"] = first  # not a submodule: it belongs to the first member
        self.ids: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.ids = ids
        return self.first(ids)


class SoftVoteModel(nn.Module):
    """The weighted soft vote as one differentiable model, for attacks on the combination itself: its
    ``logits`` are the log of the vote's probabilities, so an attack on it maximises the ensemble's own
    loss. Members that share one input-embedding layer (adapters on one backbone) see the attacked
    embeddings as they are; members with their own (full fine-tuning) each see their own embedding of
    the tokens plus the same perturbation: one attack on the input, as on a single model."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.models = list(models)  # a plain list: the members stay owned by the ensemble, not registered twice
        self.weights = list(weights)
        # An attack's backward holds every member's activations at once: robust evaluation attacks a batch
        # in this many slices, so it needs one member's memory (slices are attacked independently anyway).
        self.attack_slices = len(self.models)

        layers = {id(m.get_input_embeddings()) for m in self.models}
        first = self.models[0].get_input_embeddings()
        self.lookup = first if len(layers) == 1 else RememberingLookup(first)

    def get_input_embeddings(self) -> nn.Module:
        return self.lookup

    def member_inputs(self, model: nn.Module, inputs: dict) -> dict:
        """``inputs`` as member ``model`` reads them: its own embedding of the remembered ids plus the
        perturbation, when members embed differently and the call passes embeddings."""
        if not isinstance(self.lookup, RememberingLookup) or "inputs_embeds" not in inputs:
            return inputs
        ids = self.lookup.ids
        delta = inputs["inputs_embeds"] - self.lookup.first(ids).detach()
        return {**inputs, "inputs_embeds": model.get_input_embeddings()(ids).detach() + delta}

    def forward(self, **inputs: Any) -> Any:
        from types import SimpleNamespace

        probs = sum(w * torch.softmax(m(**self.member_inputs(m, inputs)).logits.float(), dim=-1)
                    for m, w in zip(self.models, self.weights))
        return SimpleNamespace(logits=torch.log(probs.clamp_min(1e-12)))
