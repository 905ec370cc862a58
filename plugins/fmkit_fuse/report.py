"""Per-modality reports for a trained fusion model: how much each modality contributes (as its head
measures it), and, with harden plugins, accuracy with the text attacked alone, the image alone, and
both together."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fmkit.plugin import Batch, Hardener, Scorer, accelerator_for, model_inputs, prediction_batches

ATTACKS = ("text", "image", "text+image")


class Pinned(nn.Module):
    """``model`` with some inputs fixed (``pixel_values``, ``input_ids`` or ``inputs_embeds``) whatever the
    caller passes, so a Hardener attacking it can only move the others. Records the last call's
    inputs: an attack's last forward is the adversarial one."""

    def __init__(self, model: nn.Module, fixed: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.fixed, self.last = model, fixed, {}

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, **inputs: Any) -> Any:
        for text_key, other in (("input_ids", "inputs_embeds"), ("inputs_embeds", "input_ids")):
            if text_key in self.fixed:
                inputs.pop(other, None)
        inputs.update(self.fixed)
        self.last = inputs
        return self.model(**inputs)


def attacked_logits(hardener: Hardener, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Logits with the text attacked alone (the hardener sees a batch without pixels, so it attacks
    the embeddings), the image alone (text pinned) and both: the image attack against the text the
    first attack left (sequential, text first)."""
    pinned = Pinned(model, {"pixel_values": batch["pixel_values"]})
    logits = {"text": hardener.attack(pinned, {k: v for k, v in batch.items() if k != "pixel_values"})}
    adversarial = pinned.last.get("inputs_embeds")
    logits["image"] = hardener.attack(Pinned(model, {"input_ids": batch["input_ids"]}), batch)
    text = {"input_ids": batch["input_ids"]} if adversarial is None else {"inputs_embeds": adversarial.detach()}
    logits["text+image"] = hardener.attack(Pinned(model, text), batch)
    return logits


def modality_metrics(measure: str, model: nn.Module, scorer: Scorer, splits: dict[str, list],
                     hardeners: list[Hardener]) -> dict[str, Any]:
    """{"measure": ..., split: {"contribution": {modality: mean}, "robust_accuracy": {hardener: {attack: acc}}}};
    ``measure`` says what the head's contributions are. Robust accuracy only when the task has images and
    a harden plugin is selected."""
    modalities = ["text", *scorer.run.task.inputs["modalities"]]
    attackers = hardeners if "image" in modalities else []
    settings = scorer.run.config.train
    device = accelerator_for(settings.precision).device
    report: dict[str, Any] = {"measure": measure}
    for split, examples in splits.items():
        features = scorer.encode(split, examples)
        total = torch.zeros(len(modalities))
        correct = {(h, attack): 0 for h in range(len(attackers)) for attack in ATTACKS}
        for _, batch in prediction_batches(features, settings.eval_batch_size, scorer.pad_id, device):
            with torch.no_grad():
                total += model(**model_inputs(batch)).contributions.float().sum(0).cpu()
            for h, hardener in enumerate(attackers):
                for attack, logits in attacked_logits(hardener, model, batch).items():
                    correct[h, attack] += int((logits.argmax(-1) == batch["labels"]).sum())
        count = len(features)
        entry: dict[str, Any] = {"contribution": {m: round(float(v) / count, 4) for m, v in zip(modalities, total)}}
        for (h, attack), right in correct.items():
            name = getattr(attackers[h], "name", type(attackers[h]).__name__)
            entry.setdefault("robust_accuracy", {}).setdefault(name, {})[attack] = round(right / count, 4)
        report[split] = entry
    return report
