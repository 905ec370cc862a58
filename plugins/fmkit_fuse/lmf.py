"""``lmf``: low-rank multimodal fusion (Liu et al. 2018), a multiplicative fusion of any number of modalities."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import Field

from fmkit_fuse.fusion import FusionOptions, FusionPlugin

if TYPE_CHECKING:
    from torch import nn


class LowRankOptions(FusionOptions):
    rank: int = Field(4, ge=1, description="rank of the factorised fusion tensor (sum of this many products)")


@functools.cache
def low_rank_head() -> type[nn.Module]:
    """The LowRankHead class, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from fmkit_fuse.model import BatchStandardise, FusionSpec, Part

    class LowRankHead(nn.Module):
        """Tensor fusion (Zadeh et al. 2017) with its weight tensor factorised to rank r (Liu et al. 2018):
        each pooled modality, with a constant 1 appended, is projected r times to the fusion width, the
        projections are multiplied elementwise across modalities and summed over r with learned weights.
        The appended 1 keeps every unimodal and lower-order term of the full outer product, while the
        products give every modality's features a gradient that depends on the others', which is what
        a label made of their interaction (an XOR) needs. Cost: linear in the number of modalities.
        Each pooled vector is first standardised over the batch (``BatchStandardise``). Contribution:
        each modality's share of how far the fused vector moves when that modality's standardised
        features are zeroed (its constant 1 kept)."""

        measure = "share of the fused vector's change when the modality's features are zeroed"

        def __init__(self, spec: FusionSpec):
            super().__init__()
            self.dropout = nn.Dropout(spec.dropout)
            self.standardise = nn.ModuleList(BatchStandardise(spec.dim) for _ in spec.modalities)
            self.factors = nn.ParameterList(nn.Parameter(self._factor(spec)) for _ in spec.modalities)
            self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, spec.rank)))
            self.bias = nn.Parameter(torch.zeros(spec.dim))
            self.out = nn.Sequential(nn.LayerNorm(spec.dim), nn.GELU(), nn.Dropout(spec.dropout),
                                     nn.Linear(spec.dim, len(spec.labels)))

        @staticmethod
        def _factor(spec: FusionSpec) -> torch.Tensor:
            """rank x (dim + 1) x dim: Xavier-normal, except the row that multiplies the constant 1, which
            starts at ones. Each projection then starts near 1 + (its modality's term), and their product
            near 1 + the sum of the terms + their products: additive fusion with interactions beside it,
            rather than one noisy modality scaling every other's signal at random from the first step."""
            factor = nn.init.xavier_normal_(torch.empty(spec.rank, spec.dim + 1, spec.dim))
            factor.data[:, -1] = 1.0
            return factor

        def fuse(self, pooled: list[torch.Tensor]) -> torch.Tensor:
            """N x dim: sum over the rank of the product over modalities of [v_m; 1] W_m."""
            product = None
            for vector, factor in zip(pooled, self.factors):
                ones = vector.new_ones(len(vector), 1)
                projected = torch.einsum("nd,rdh->nrh", torch.cat([vector, ones], dim=-1), factor)
                product = projected if product is None else product * projected
            return (self.rank_weights @ product).squeeze(1) + self.bias

        def forward(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = [self.dropout(norm(p.pooled)) for norm, p in zip(self.standardise, parts)]
            fused = self.fuse(pooled)
            with torch.no_grad():
                without = [self.fuse([torch.zeros_like(v) if i == m else v for i, v in enumerate(pooled)])
                           for m in range(len(pooled))]
                moved = torch.stack([(fused - other).norm(dim=-1) for other in without], dim=-1)
            return self.out(fused), moved / moved.sum(-1, keepdim=True).clamp(min=1e-12)

    return LowRankHead


class LowRank(FusionPlugin):
    """Low-rank multimodal fusion: modalities multiplied through a rank-r factorised tensor (Liu et al. 2018)."""

    name = "lmf"
    Options = LowRankOptions
    head_class = staticmethod(low_rank_head)
