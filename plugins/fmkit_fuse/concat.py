"""``concat``: the modalities' pooled projections concatenated, then an MLP (MMF's concat_bert,
Multimodal-Toolkit's concat)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fmkit_fuse.fusion import FusionPlugin

if TYPE_CHECKING:
    from torch import nn


@functools.cache
def concat_head() -> type[nn.Module]:
    """The ConcatHead class, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from fmkit_fuse.model import FusionSpec, Part

    class ConcatHead(nn.Module):
        """Pooled projections concatenated, then an MLP. Contribution: each modality's share of the first
        layer's input, |W_m v_m| / sum."""

        measure = "share of the first head layer's input norm, |W_m v_m| / sum"

        def __init__(self, spec: FusionSpec):
            super().__init__()
            self.dim = spec.dim
            self.dropout = nn.Dropout(spec.dropout)
            self.hidden = nn.Linear(len(spec.modalities) * spec.dim, spec.dim)
            self.out = nn.Sequential(nn.GELU(), nn.Dropout(spec.dropout), nn.Linear(spec.dim, len(spec.labels)))

        def forward(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = [p.pooled for p in parts]
            logits = self.out(self.hidden(self.dropout(torch.cat(pooled, dim=-1))))
            blocks = self.hidden.weight.split(self.dim, dim=1)
            share = torch.stack([(v @ w.T).norm(dim=-1) for v, w in zip(pooled, blocks)], dim=-1)
            return logits, share / share.sum(-1, keepdim=True).clamp(min=1e-12)

    return ConcatHead


class Concat(FusionPlugin):
    """Concatenate each modality's projection, then an MLP head (MMF concat_bert, Multimodal-Toolkit concat)."""

    name = "concat"
    head_class = staticmethod(concat_head)
