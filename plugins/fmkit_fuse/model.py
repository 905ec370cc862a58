"""The fused task model: the foundation's text encoder, an image encoder (a small CNN trained from
scratch, or a transformers vision model) and a feature MLP, each projected to one width, then the
fusion method's head (see ``fmkit_fuse.fusion.FusionPlugin.head_class``), which returns logits and
each modality's contribution. Nothing here depends on which method it is.

The text encoder stays a plain transformers module (``model.text_encoder``) so PEFT can target it,
and pixel normalisation happens inside the model, so attacks work on [0, 1] pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmkit.plugin import FmkitError, mark_new

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
TEXT_DIR, IMAGE_DIR = "text_encoder", "image_encoder"
CNN_WIDTH = 64


@dataclass
class FusionSpec:
    """What rebuilds the architecture; saved as the model directory's config.json."""

    method: str  # the fuse plugin that made the model (whose head it has)
    labels: list[str]
    modalities: list[str]  # "text" first, then "image" and/or "features"
    feature_count: int = 0  # encoded numbers per row (missing-value indicators included)
    category_sizes: list[int] = field(default_factory=list)  # per categorical column: its levels + "unknown"
    image_size: int = 32  # the data's image side
    missing: bool = False  # rows may lack image/features: learn a stand-in embedding
    dim: int = 128
    dropout: float = 0.1
    heads: int = 4  # attention heads, for a head that attends
    rank: int = 4  # rank of a low-rank fusion tensor
    products: bool = False  # a concatenating head also takes the pairwise products
    image_encoder: str = "cnn"  # "cnn" or "pretrained" (a transformers vision model in image_encoder/)
    image_width: int = CNN_WIDTH
    vision_size: int | None = None  # side the vision model expects; pixels are resized to it
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class FusionOutput:
    logits: torch.Tensor  # N x classes
    contributions: torch.Tensor  # N x modalities, rows sum to 1 (gate values, attention mass, ...)


@dataclass
class Part:
    """One modality in fusion width: tokens (N x P x dim), which are real (N x P) and their mean (N x dim)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class BatchStandardise(nn.BatchNorm1d):
    """N x dim -> each feature standardised over the batch (a batch norm without scale and shift; its
    running statistics in evaluation, and for a training batch of one row, which has no spread).

    What a multiplicative interaction needs: mean-pooled transformer states share a large common
    component, and the cues an interaction multiplies are small deviations from it, so without
    centring the products are dominated by first-order terms whose gradient noise drowns the
    interaction's (on the generated word-XOR-shape task, nothing learned it in 10 epochs without)."""

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and len(pooled) > 1:
            return super().forward(pooled)
        return nn.functional.batch_norm(pooled, self.running_mean, self.running_var, training=False, eps=self.eps)


def small_cnn() -> nn.Sequential:
    """Three conv blocks, then a 4 x 4 grid of CNN_WIDTH-channel cells (16 image tokens). GroupNorm, not
    BatchNorm: the training loop restores the best epoch's parameters, not running statistics."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (16, 32, CNN_WIDTH):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))


class PixelEncoder(nn.Module):
    """[0, 1] pixels -> image tokens: normalised here (attacks stay in pixel space), then the small CNN's
    grid cells, or a transformers vision model's tokens (pixels resized to the side it expects)."""

    def __init__(self, spec: FusionSpec, vision: nn.Module | None = None):
        super().__init__()
        self.pretrained = vision is not None
        self.model = vision if vision is not None else small_cnn()
        self.side = spec.vision_size
        self.register_buffer("mean", torch.tensor(spec.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = (pixels - self.mean) / self.std
        if not self.pretrained:
            return self.model(pixels).flatten(2).transpose(1, 2)
        if self.side and pixels.shape[-1] != self.side:
            pixels = nn.functional.interpolate(pixels, size=(self.side, self.side), mode="bilinear",
                                               align_corners=False)
        tokens = self.model(pixel_values=pixels).last_hidden_state
        return tokens.flatten(2).transpose(1, 2) if tokens.dim() == 4 else tokens  # conv nets: N x C x h x w


def embedding_width(levels: int, dim: int) -> int:
    """Width of a categorical column's embedding: fastai's rule of thumb 1.6 * levels^0.56, at most ``dim``."""
    return max(1, min(dim, round(1.6 * levels**0.56)))


class TabularEncoder(nn.Module):
    """Numbers (encoded by the reader) and categories (indices, 0 = unknown) -> one token: each categorical
    column's learned embedding, concatenated with the numbers, through an MLP (input -> dim -> dim)."""

    def __init__(self, spec: FusionSpec):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_width(n, spec.dim)) for n in spec.category_sizes)
        width = spec.feature_count + sum(e.embedding_dim for e in self.embeddings)
        self.mlp = nn.Sequential(nn.Linear(width, spec.dim), nn.GELU(), nn.Linear(spec.dim, spec.dim))

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        numbers, categories = inputs
        embedded = [e(categories[:, i]) for i, e in enumerate(self.embeddings)] if categories is not None else []
        return self.mlp(torch.cat([numbers, *embedded], dim=-1)).unsqueeze(1)  # one feature token


class Modality(nn.Module):
    """One input on its way to fusion: its encoder (none for text: the backbone's states come in), a
    projection to the fusion width, and a learned stand-in for rows that lack the input."""

    def __init__(self, encoder: nn.Module | None, width: int, dim: int, missing: bool):
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(width, dim)
        self.missing = nn.Parameter(torch.zeros(dim)) if missing else None

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None,
                missing: torch.Tensor | None = None) -> Part:
        tokens = self.projection(self.encoder(inputs) if self.encoder is not None else inputs)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if missing is not None and self.missing is not None:
            tokens = torch.where(missing.view(-1, 1, 1), self.missing.to(tokens.dtype), tokens)
        return Part(tokens, mask, masked_mean(tokens, mask))


class FusionModel(nn.Module):
    """Text + image and/or features -> class logits. ``forward`` takes ``input_ids`` or ``inputs_embeds``,
    ``attention_mask``, ``token_type_ids``, ``pixel_values`` (N x 3 x H x W in [0, 1]), ``features``
    (numbers as the reader encodes them), ``categories`` (N x columns, indices; 0 = unknown) and, when
    rows may lack them, ``image_missing`` / ``features_missing``.

    Its children are the backbone (``text_encoder``) and plain modules that PEFT's ``modules_to_save``
    can wrap (``text_input``, ``image_input``, ``features_input``, ``head``). ``head_class`` is the fusion
    method's head, built last (after the modality encoders, so their weights initialise as before)."""

    base_model_prefix = "text_encoder"  # the transformers convention: where adapters find the backbone

    def __init__(self, spec: FusionSpec, head_class: type[nn.Module], text_encoder: nn.Module,
                 image_encoder: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.text_encoder = text_encoder
        self.text_input = Modality(None, text_encoder.config.hidden_size, spec.dim, missing=False)
        if "image" in spec.modalities:
            self.image_input = Modality(PixelEncoder(spec, image_encoder), spec.image_width, spec.dim, spec.missing)
        if "features" in spec.modalities:
            self.features_input = Modality(TabularEncoder(spec), spec.dim, spec.dim, spec.missing)
        self.head = head_class(spec)
        mark_new(*(child for child in self.children() if child is not text_encoder))  # train.new_lr applies
        if image_encoder is not None:
            mark_new(image_encoder, new=False)  # a pretrained vision model keeps train.lr

    @property
    def config(self) -> Any:
        """The text encoder's transformers config: wrappers such as PEFT read generic flags from it."""
        return self.text_encoder.config

    def get_input_embeddings(self) -> nn.Module:
        return self.text_encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None,
                categories: torch.Tensor | None = None, image_missing: torch.Tensor | None = None,
                features_missing: torch.Tensor | None = None, **_: Any) -> FusionOutput:
        """Extra keyword arguments (``labels``, ``return_dict``... that wrappers such as PEFT pass) are
        ignored: the core computes the loss from the logits."""
        text_inputs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                       "token_type_ids": token_type_ids}
        states = self.text_encoder(**{k: v for k, v in text_inputs.items() if v is not None}).last_hidden_state
        parts = [self.text_input(states, attention_mask.bool() if attention_mask is not None else None)]
        if "image" in self.spec.modalities:
            parts.append(self.image_input(self._needed(pixel_values, "pixel_values"), missing=image_missing))
        if "features" in self.spec.modalities:
            if self.spec.category_sizes:
                self._needed(categories, "categories")
            numbers = self._needed(features, "features")
            parts.append(self.features_input((numbers, categories), missing=features_missing))
        logits, contributions = self.head(parts)
        return FusionOutput(logits, contributions)

    def _needed(self, value: torch.Tensor | None, key: str) -> torch.Tensor:
        if value is None:
            raise ValueError(f"this model fuses {', '.join(self.spec.modalities)}: pass {key}")
        return value

    def save_pretrained(self, directory: Path | str) -> None:
        """config.json (the FusionSpec), the encoders' transformers configs and model.safetensors."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_encoder.config.save_pretrained(directory / TEXT_DIR)
        if self.spec.image_encoder == "pretrained":
            self.image_input.encoder.model.config.save_pretrained(directory / IMAGE_DIR)
        (directory / CONFIG_FILE).write_text(json.dumps({"model_type": "fmkit-fusion", **asdict(self.spec)}, indent=2))
        save_model(self, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: Path | str, head_class: type[nn.Module],
                        trust_remote_code: bool = False) -> FusionModel:
        """Rebuild the architecture from the saved configs, with ``head_class`` (the head of the method the
        config names), then load the weights (strict)."""
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModel

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FmkitError(f"{directory}: no saved fusion model ({CONFIG_FILE} and {WEIGHTS_FILE})")
        saved = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        saved.pop("model_type", None)
        spec = FusionSpec(**saved)

        def encoder(sub: str) -> nn.Module:
            config = AutoConfig.from_pretrained(directory / sub, trust_remote_code=trust_remote_code)
            return AutoModel.from_config(config, trust_remote_code=trust_remote_code)

        image = encoder(IMAGE_DIR) if spec.image_encoder == "pretrained" else None
        model = cls(spec, head_class, encoder(TEXT_DIR), image)
        load_model(model, str(directory / WEIGHTS_FILE), strict=True)
        return model
