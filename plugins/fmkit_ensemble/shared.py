"""Adapter members on one frozen backbone.

Each member is a named PEFT adapter (with its own copy of the task head, PEFT's ``modules_to_save``)
inside one ``PeftModel``; an ``AdapterMember`` is that model seen with the member's adapter switched
on, so the core trains, scores, attacks and saves it like any model. Full fine-tuned members stay
separate models. Imported only once a run has members (it imports torch).
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fmkit.evaluate import model_inputs, softmax_predictor
from fmkit.types import Member

SHAREABLE = {"LORA", "IA3", "LOHA", "LOKR"}  # adapters that can sit side by side and train one at a time
BATCHED = {"LORA"}  # whose forward takes ``adapter_names``: every member in one pass


def peft_model(model: Any) -> Any:
    """``model`` if it is a ``peft.PeftModel``, else None (without importing peft for full members)."""
    peft = sys.modules.get("peft")
    return model if peft is not None and isinstance(model, peft.PeftModel) else None


def peft_type(holder: Any) -> str:
    return holder.peft_config[holder.active_adapter].peft_type.value


class AdapterMember(nn.Module):
    """One member of a shared ``PeftModel``: forwards with its own adapter (and head) active."""

    def __init__(self, holder: Any, adapter: str):
        super().__init__()
        self.holder = holder
        self.adapter = adapter
        self.activate()

    @property
    def config(self) -> Any:
        return self.holder.config

    def activate(self) -> None:
        if self.holder.active_adapter != self.adapter:
            self.holder.set_adapter(self.adapter)  # only this adapter's weights require gradients now

    def forward(self, **inputs: Any) -> Any:
        self.activate()
        return self.holder(**inputs)

    def get_input_embeddings(self) -> nn.Module:
        return self.holder.get_input_embeddings()

    def save_pretrained(self, directory: Path) -> None:
        """This member alone in PEFT format: ``PeftModel.from_pretrained(base, directory)`` loads it."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
            self.holder.save_pretrained(tmp, selected_adapters=[self.adapter])  # PEFT writes it to tmp/<adapter>
            shutil.move(str(Path(tmp) / self.adapter), str(directory))


class Backbone:
    """The ``PeftModel`` the members share. ``template`` is the adapter a common start copies: the
    untrained ``default`` one, or a trained trunk the members fork from (soups)."""

    def __init__(self, holder: Any):
        self.holder = holder
        self.template = holder.active_adapter

    @classmethod
    def of(cls, model: Any) -> Backbone | None:
        """The shared backbone for members like ``model``, or None when they cannot share one."""
        holder = peft_model(model)
        return cls(holder) if holder is not None and peft_type(holder) in SHAREABLE else None

    def add(self, name: str, seed: int, same_start: bool) -> AdapterMember:
        """A new member: an adapter of the template's kind, initialised with ``seed`` or as a copy of the template."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        torch.manual_seed(seed)
        self.holder.add_adapter(name, copy.deepcopy(self.holder.peft_config[self.template]))
        if same_start:
            start = get_peft_model_state_dict(self.holder, adapter_name=self.template)
            set_peft_model_state_dict(self.holder, start, adapter_name=name)
        return AdapterMember(self.holder, name)


def share_loaded(members: list[Member]) -> list[Member]:
    """Saved adapter members reload each on a backbone of its own: move their adapters onto the first
    one's backbone and let the others go, so eval and predict hold one backbone too."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    holders = [peft_model(m.model) for m in members]
    if any(h is None for h in holders) or Backbone.of(holders[0]) is None:
        return members
    first = holders[0]
    for member, holder in zip(members, holders):
        first.add_adapter(member.name, copy.deepcopy(holder.peft_config[holder.active_adapter]))
        set_peft_model_state_dict(first, get_peft_model_state_dict(holder, adapter_name=holder.active_adapter),
                                  adapter_name=member.name)
        member.model = AdapterMember(first, member.name).eval()
    return members


def member_probabilities(models: Sequence[nn.Module], batch: dict) -> torch.Tensor:
    """(members, batch, [tokens,] classes): LoRA members on one backbone in batched passes (PEFT's
    ``adapter_names``: rows repeated once per member), any others one by one. A pass holds no more
    rows than the batch itself, so memory stays that of one model's prediction."""
    holder = getattr(models[0], "holder", None)
    batched = (holder is not None and not holder.training and peft_type(holder) in BATCHED
               and all(getattr(m, "holder", None) is holder for m in models))
    if not batched:
        return torch.stack([softmax_predictor(m)(batch) for m in models])
    inputs = model_inputs(batch)
    rows = len(inputs["input_ids"])
    chunk = max(1, rows // len(models))
    parts = []
    for start in range(0, rows, chunk):
        part = {k: v[start:start + chunk] for k, v in inputs.items()}
        size = len(part["input_ids"])
        part = {k: v.repeat(len(models), *[1] * (v.dim() - 1)) for k, v in part.items()}
        logits = holder(**part, adapter_names=[m.adapter for m in models for _ in range(size)]).logits.float()
        parts.append(torch.softmax(logits, dim=-1).view(len(models), size, *logits.shape[1:]))
    return torch.cat(parts, dim=1)


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


def plain_model(model: nn.Module) -> nn.Module:
    """A standalone copy of the task model that ``model`` computes with (a member's adapter merged in)."""
    if isinstance(model, AdapterMember):
        model.activate()
        model = model.holder
    copied = copy.deepcopy(model)
    return copied.merge_and_unload() if peft_model(copied) is not None else copied


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The member's weights as a plain task model's state dict (full members: their own, not a copy)."""
    adapted = isinstance(model, AdapterMember) or peft_model(model) is not None
    return plain_model(model).state_dict() if adapted else model.state_dict()
