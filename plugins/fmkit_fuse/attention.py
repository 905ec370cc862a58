"""``attention``: cross-modal attention, one transformer block over every modality's tokens."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from fmkit_fuse.fusion import PRODUCTS_OPTION, FusionOptions, FusionPlugin

if TYPE_CHECKING:
    from torch import nn


class AttentionOptions(FusionOptions):
    heads: int = Field(4, ge=1, description="attention heads in the cross-modal transformer block")
    products: bool = PRODUCTS_OPTION

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> AttentionOptions:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


@functools.cache
def attention_head() -> type[nn.Module]:
    """The AttentionHead class, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from fmkit_fuse.model import BatchStandardise, FusionSpec, Part, masked_mean

    class AttentionHead(nn.Module):
        """One transformer block over all modality tokens (with modality-type embeddings), so text tokens
        attend to image and feature tokens; the text positions are pooled for the classifier, beside (with
        ``spec.products``) the elementwise product of the pooled text with each other modality's pooled
        positions, batch-standardised: attention only mixes other modalities' values into the text, added,
        which cannot learn a label that needs two cues together (docs/fusion.md). Contribution: the
        attention mass text tokens give each modality."""

        measure = "attention mass that text tokens give each modality"

        def __init__(self, spec: FusionSpec):
            super().__init__()
            self.kind = nn.Embedding(len(spec.modalities), spec.dim)
            self.attention = nn.MultiheadAttention(spec.dim, spec.heads, dropout=spec.dropout, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(spec.dim), nn.LayerNorm(spec.dim)
            self.ffn = nn.Sequential(nn.Linear(spec.dim, 2 * spec.dim), nn.GELU(), nn.Dropout(spec.dropout),
                                     nn.Linear(2 * spec.dim, spec.dim))
            others = len(spec.modalities) - 1 if spec.products else 0
            self.standardise = nn.ModuleList(BatchStandardise(spec.dim) for _ in range(others + 1 if others else 0))
            self.out = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear((1 + others) * spec.dim, len(spec.labels)))

        def forward(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = torch.cat([p.tokens + self.kind.weight[i] for i, p in enumerate(parts)], dim=1)
            mask = torch.cat([p.mask for p in parts], dim=1)
            attended, weights = self.attention(tokens, tokens, tokens, key_padding_mask=~mask, need_weights=True)
            x = self.norm1(tokens + attended)
            x = self.norm2(x + self.ffn(x))
            lengths = [p.tokens.shape[1] for p in parts]
            pooled = [masked_mean(x_m, p.mask) for x_m, p in zip(x.split(lengths, dim=1), parts)]
            centred = [norm(v) for norm, v in zip(self.standardise, pooled)]
            blocks = [pooled[0], *(centred[0] * other for other in centred[1:])]
            by_modality = weights[:, :lengths[0]].split(lengths, dim=-1)
            mass = torch.stack([w.sum(-1) for w in by_modality], dim=-1)  # N x text tokens x M
            return self.out(torch.cat(blocks, dim=-1)), masked_mean(mass, parts[0].mask)

    return AttentionHead


class Attention(FusionPlugin):
    """Cross-modal attention: a transformer block over all modality tokens; text attends to image/features."""

    name = "attention"
    Options = AttentionOptions
    head_class = staticmethod(attention_head)
