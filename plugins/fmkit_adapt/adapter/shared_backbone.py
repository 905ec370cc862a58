"""Adapter members on one frozen backbone: the adapter plugin's answer to ``fmkit_adapt_share``.

Each member is a named PEFT adapter (with its own copy of the task head, PEFT's ``modules_to_save``)
inside one ``PeftModel``; an ``AdapterMember`` is that model seen with the member's adapter switched
on, so the core trains, scores, attacks and saves it like any model. Imported only once a run has
members (it imports torch).
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

from fmkit.plugin import model_inputs, quiet_transformers

SHAREABLE = {"LORA", "IA3", "LOHA", "LOKR"}  # adapters that can sit side by side and train one at a time
BATCHED = {"LORA"}  # whose forward takes ``adapter_names``: every member in one pass


def peft_model(model: Any) -> Any:
    """``model`` if it is a ``peft.PeftModel``, else None (without importing peft for other models)."""
    peft = sys.modules.get("peft")
    return model if peft is not None and isinstance(model, peft.PeftModel) else None


def peft_type(holder: Any) -> str:
    return holder.peft_config[holder.active_adapter].peft_type.value


class AdapterMember(nn.Module):
    """One member of a shared ``PeftModel``: forwards with its own adapter (and head) active."""

    def __init__(self, backbone: PeftBackbone, adapter: str):
        super().__init__()
        self.holder = backbone.holder
        self.adapter = adapter
        self.__dict__["shared_backbone"] = backbone  # not a submodule: the backbone is the holder's
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


class PeftBackbone:
    """The ``PeftModel`` the members share (a ``fmkit.plugin.SharedBackbone``)."""

    def __init__(self, holder: Any):
        self.holder = holder
        self.origin = holder.active_adapter  # the adapter the holder was made with: the members' common start

    @classmethod
    def of(cls, model: Any) -> PeftBackbone | None:
        """The shared backbone for members like ``model``, or None when they cannot share one."""
        holder = peft_model(model)
        return cls(holder) if holder is not None and peft_type(holder) in SHAREABLE else None

    def adapter_of(self, model: Any) -> str:
        """The adapter of ``model``: a member's own, or the holder's original one."""
        return model.adapter if isinstance(model, AdapterMember) else self.origin

    def add(self, name: str, seed: int, copy_of: Any = None) -> AdapterMember:
        """A new member: an adapter like the holder's, initialised with ``seed`` or as a copy of ``copy_of``'s."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        template = self.adapter_of(copy_of) if copy_of is not None else self.origin
        torch.manual_seed(seed)
        self.holder.add_adapter(name, copy.deepcopy(self.holder.peft_config[template]))
        if copy_of is not None:
            start = get_peft_model_state_dict(self.holder, adapter_name=template)
            set_peft_model_state_dict(self.holder, start, adapter_name=name)
        return AdapterMember(self, name)

    def load(self, name: str, directory: Path) -> AdapterMember:
        """A member saved by ``AdapterMember.save_pretrained`` (or a single adapter run), on this backbone."""
        with quiet_transformers():
            self.holder.load_adapter(str(directory), adapter_name=name)
        return AdapterMember(self, name)

    def probabilities(self, models: Sequence[nn.Module], batch: dict) -> torch.Tensor | None:
        """LoRA members in batched passes (PEFT's ``adapter_names``: rows repeated once per member), or
        None for other methods. A pass holds no more rows than the batch itself, so memory stays that
        of one model's prediction."""
        if self.holder.training or peft_type(self.holder) not in BATCHED:
            return None
        inputs = model_inputs(batch)
        rows = len(inputs["input_ids"])
        chunk = max(1, rows // len(models))
        parts = []
        for start in range(0, rows, chunk):
            part = {k: v[start:start + chunk] for k, v in inputs.items()}
            size = len(part["input_ids"])
            part = {k: v.repeat(len(models), *[1] * (v.dim() - 1)) for k, v in part.items()}
            logits = self.holder(**part, adapter_names=[m.adapter for m in models for _ in range(size)]).logits.float()
            parts.append(torch.softmax(logits, dim=-1).view(len(models), size, *logits.shape[1:]))
        return torch.cat(parts, dim=1)


def merged(model: nn.Module) -> nn.Module:
    """A standalone plain task model computing what ``model`` computes: a member's adapter (or a single
    run's) merged into a copy of the backbone."""
    return copy.deepcopy(_holder(model)).merge_and_unload()


def unloaded(model: nn.Module) -> nn.Module:
    """A standalone plain task model with the backbone under ``model``'s adapter, the adapter taken out, and
    its head: the base that ``AutoModelFor<Task>.from_pretrained`` loads the saved adapter onto."""
    return copy.deepcopy(_holder(model)).unload()


def _holder(model: nn.Module) -> nn.Module:
    """The PeftModel of ``model``, with a member's own adapter switched on."""
    if isinstance(model, AdapterMember):
        model.activate()
        return model.holder
    return model
