"""``gated``: a gated multimodal unit (Arevalo et al. 2017) generalised to any number of modalities."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fmkit_fuse.fusion import FusionPlugin

if TYPE_CHECKING:
    from torch import nn


@functools.cache
def gated_head() -> type[nn.Module]:
    """The GatedHead class, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from fmkit_fuse.model import BatchStandardise, FusionSpec, Part

    class GatedHead(nn.Module):
        """Gated multimodal unit for M modalities: h_m = tanh(W_m v_m), gates z = softmax over modalities
        of W_z [v_1; ...; v_M] per dimension, fused = sum z_m h_m; with two modalities this is the
        paper's sigmoid gate. The gates are where modalities interact (one modality's features set how
        much of another's passes), so the pooled vectors are standardised over the batch first
        (``BatchStandardise``), as for a product. Contribution: the mean gate value."""

        measure = "mean gate value"

        def __init__(self, spec: FusionSpec):
            super().__init__()
            count = len(spec.modalities)
            self.standardise = nn.ModuleList(BatchStandardise(spec.dim) for _ in range(count))
            self.transform = nn.ModuleList(nn.Linear(spec.dim, spec.dim) for _ in range(count))
            self.gate = nn.Linear(count * spec.dim, count * spec.dim)
            self.out = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.dim, spec.dim), nn.GELU(),
                                     nn.Dropout(spec.dropout), nn.Linear(spec.dim, len(spec.labels)))

        def forward(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = [norm(p.pooled) for norm, p in zip(self.standardise, parts)]
            hidden = torch.stack([torch.tanh(t(v)) for t, v in zip(self.transform, pooled)], dim=1)  # N x M x dim
            gates = torch.softmax(self.gate(torch.cat(pooled, dim=-1)).view_as(hidden), dim=1)
            return self.out((gates * hidden).sum(1)), gates.mean(-1)

    return GatedHead


class Gated(FusionPlugin):
    """Gated multimodal unit: learned gates weight each modality before summing (Arevalo et al. 2017)."""

    name = "gated"
    head_class = staticmethod(gated_head)
