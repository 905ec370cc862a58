"""Where a transformers task model keeps its backbone, its task head and its linear layers.

Both adapt plugins split a model the same way: ``model.base_model`` is the pretrained encoder,
every other child with parameters is the task head (newly initialised, so it always trains).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Sequence

from fmkit.plugin import FmkitError


def backbone(model: Any) -> tuple[str, Any]:
    """(attribute name, module) of the pretrained encoder inside a task model."""
    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    if encoder is None or encoder is model:
        raise FmkitError(f"{type(model).__name__} has no separate backbone (base_model) to adapt or freeze")
    return prefix, encoder


def head_modules(model: Any) -> list[str]:
    """Names of the task model's children outside the backbone that hold parameters: the head."""
    _, encoder = backbone(model)
    names = [n for n, child in model.named_children() if child is not encoder and any(True for _ in child.parameters())]
    if not names:
        raise FmkitError(f"{type(model).__name__} has no task head outside its backbone")
    return names


def encoder_linears(model: Any) -> list[str]:
    """Full names of the backbone's linear layers (what LoRA-style adapters can wrap)."""
    from torch import nn

    prefix, encoder = backbone(model)
    return [f"{prefix}.{name}" for name, module in encoder.named_modules() if isinstance(module, nn.Linear)]


def target_pattern(model: Any, suffixes: Sequence[str] | None, option: str = "adapter.target_modules") -> str:
    """A regex for PEFT matching the backbone's linear layers whose names end with one of ``suffixes``
    (all of them for None). Anchored at the backbone, so a head layer never matches; a suffix that
    matches nothing is a one-line error naming the layers there are."""
    prefix, _ = backbone(model)
    linears = encoder_linears(model)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in linears})
    if suffixes is None:
        suffixes = leaves
    for suffix in suffixes:
        if not any(name == f"{prefix}.{suffix}" or name.endswith(f".{suffix}") for name in linears):
            hint = difflib.get_close_matches(suffix, leaves, n=1)
            raise FmkitError(
                f"{option}: {suffix!r} matches no linear layer of {type(model).__name__}'s backbone"
                + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; its layers end in: {', '.join(leaves)}")
    alternatives = "|".join(re.escape(s) for s in sorted(set(suffixes)))
    return rf"{re.escape(prefix)}\.(?:.*\.)?(?:{alternatives})"
