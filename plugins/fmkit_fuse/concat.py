"""``concat``: the modalities' pooled projections concatenated, then an MLP (MMF's concat_bert,
Multimodal-Toolkit's concat); by default with each pair's elementwise product beside them."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fmkit_fuse.fusion import PRODUCTS_OPTION, FusionOptions, FusionPlugin

if TYPE_CHECKING:
    from torch import nn


class ConcatOptions(FusionOptions):
    products: bool = PRODUCTS_OPTION


@functools.cache
def concat_head() -> type[nn.Module]:
    """The ConcatHead class, defined on first use so that importing this module does not import torch."""
    import itertools

    import torch
    from torch import nn

    from fmkit_fuse.model import BatchStandardise, FusionSpec, Part

    class ConcatHead(nn.Module):
        """Pooled projections concatenated (with each pair's elementwise product of the batch-standardised
        projections when ``spec.products``: see ``BatchStandardise``), then an MLP. Contribution: each
        modality's share of the first layer's input, |W_m v_m| / sum (a product block's share split
        evenly between its two modalities)."""

        measure = "share of the first head layer's input norm, |W_m v_m| / sum"

        def __init__(self, spec: FusionSpec):
            super().__init__()
            self.dim = spec.dim
            count = len(spec.modalities)
            self.pairs = list(itertools.combinations(range(count), 2)) if spec.products else []
            self.standardise = nn.ModuleList(BatchStandardise(spec.dim) for _ in range(count))
            self.dropout = nn.Dropout(spec.dropout)
            self.hidden = nn.Linear((count + len(self.pairs)) * spec.dim, spec.dim)
            self.out = nn.Sequential(nn.GELU(), nn.Dropout(spec.dropout), nn.Linear(spec.dim, len(spec.labels)))

        def forward(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
            centred = [norm(p.pooled) for norm, p in zip(self.standardise, parts)]
            blocks = centred + [centred[a] * centred[b] for a, b in self.pairs]
            logits = self.out(self.hidden(self.dropout(torch.cat(blocks, dim=-1))))
            weights = self.hidden.weight.split(self.dim, dim=1)
            norms = [(v @ w.T).norm(dim=-1) for v, w in zip(blocks, weights)]
            share = torch.stack(norms[:len(parts)], dim=-1)
            for (a, b), norm in zip(self.pairs, norms[len(parts):]):
                share[:, a] += norm / 2
                share[:, b] += norm / 2
            return logits, share / share.sum(-1, keepdim=True).clamp(min=1e-12)

    return ConcatHead


class Concat(FusionPlugin):
    """Concatenate each modality's projection and their pairwise products, then an MLP (MMF concat_bert, MLB)."""

    name = "concat"
    Options = ConcatOptions
    head_class = staticmethod(concat_head)
