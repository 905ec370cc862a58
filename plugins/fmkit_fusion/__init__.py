"""Fuse-stage plugins for ``--task multimodal``: ``concat``, ``gated`` and ``attention``.

Each turns the foundation (the text encoder) plus the task's image and/or numeric features into one
classifier; they differ only in the fusion head (see ``fmkit_fusion.model``). Nothing heavy is
imported until a hook runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

import fmkit
from fmkit.errors import FmkitError
from fmkit.types import Foundation, Run

CNN = "cnn"


class FusionOptions(BaseModel):
    """Options every fusion method shares."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(128, ge=8, description="width every modality is projected to before fusion")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the fusion head")
    image_encoder: str = Field(
        CNN, description="'cnn' (a small CNN trained from scratch) or a local directory holding a transformers "
        "vision model whose forward takes pixel_values (ViT, DeiT, ConvNeXt, ...)")
    image_mean: list[float] | None = Field(
        None, description="per-channel mean for pixel normalisation (none: the vision model's "
        "preprocessor_config.json, else 0.5)")
    image_std: list[float] | None = Field(
        None, description="per-channel standard deviation for pixel normalisation (none: as image_mean)")

    @model_validator(mode="after")
    def _three_channels(self) -> FusionOptions:
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values is not None and (len(values) != 3 or (name == "image_std" and min(values) <= 0)):
                raise ValueError(f"{name} takes three values (R, G, B)" + (", all > 0" if name == "image_std" else ""))
        return self


class _Fusion:
    """The shared plugin body; subclasses name the method."""

    stage = "fuse"
    name = ""
    Options = FusionOptions
    train_defaults = {"lr": 5e-4}  # the image encoder and head start from scratch

    def __init__(self, options: FusionOptions):
        self.options = options

    def check(self, config: Any) -> None:
        if config.task != "multimodal":
            raise FmkitError(f"plugin {self.name!r} fuses modalities: use it with --task multimodal")
        encoder = self.options.image_encoder
        if encoder != CNN and not (Path(encoder) / "config.json").is_file():
            raise FmkitError(f"{self.name}.image_encoder {encoder}: not 'cnn' nor a local model directory "
                             "(no config.json)")

    @fmkit.hookimpl
    def fmkit_fuse(self, run: Run, foundation: Foundation) -> FusionBuilder:
        return FusionBuilder(run, foundation, self.name, self.options)


class Concat(_Fusion):
    """Concatenate each modality's projection, then an MLP head (MMF concat_bert, Multimodal-Toolkit concat)."""

    name = "concat"


class Gated(_Fusion):
    """Gated multimodal unit: learned gates weight each modality before summing (Arevalo et al. 2017)."""

    name = "gated"


class AttentionOptions(FusionOptions):
    heads: int = Field(4, ge=1, description="attention heads in the cross-modal transformer block")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> AttentionOptions:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class Attention(_Fusion):
    """Cross-modal attention: a transformer block over all modality tokens; text attends to image/features."""

    name = "attention"
    Options = AttentionOptions


class FusionBuilder:
    """Builds and reloads FusionModels for the run's task (the ModelBuilder of the fuse stage)."""

    def __init__(self, run: Run, foundation: Foundation, method: str, options: FusionOptions):
        self.run, self.foundation, self.method, self.options = run, foundation, method, options

    def build(self) -> Any:
        from transformers import AutoModel

        from fmkit.model import quiet_transformers
        from fmkit_fusion.model import FusionModel, FusionSpec

        task, o = self.run.task, self.options
        inputs = task.inputs
        spec = FusionSpec(self.method, task.labels, ["text", *inputs["modalities"]],
                          feature_count=len(inputs.get("feature_mean", [])), image_size=inputs["image_size"],
                          missing=inputs["missing"], dim=o.dim, dropout=o.dropout, heads=getattr(o, "heads", 1))
        trust = self.run.config.trust_remote_code
        image = None
        with quiet_transformers():
            text = AutoModel.from_pretrained(self.foundation.path, trust_remote_code=trust)
            if "image" in inputs["modalities"] and o.image_encoder != CNN:
                image = AutoModel.from_pretrained(o.image_encoder, trust_remote_code=trust)
                self._describe_vision(spec, image)
        spec.image_mean = o.image_mean or spec.image_mean
        spec.image_std = o.image_std or spec.image_std
        return FusionModel(spec, text, image)

    def _describe_vision(self, spec: Any, encoder: Any) -> None:
        """Fill the spec from a transformers vision model: its token width (one dry run), the side it
        expects and its preprocessor's normalisation."""
        import torch

        spec.image_encoder = "pretrained"
        side = getattr(encoder.config, "image_size", None)
        spec.vision_size = side if isinstance(side, int) else None
        probe = spec.vision_size or spec.image_size
        with torch.no_grad():
            tokens = encoder(pixel_values=torch.zeros(1, 3, probe, probe)).last_hidden_state
        spec.image_width = tokens.shape[1] if tokens.dim() == 4 else tokens.shape[-1]
        processor = Path(self.options.image_encoder) / "preprocessor_config.json"
        if processor.is_file():
            saved = json.loads(processor.read_text(encoding="utf-8"))
            spec.image_mean = list(saved.get("image_mean", spec.image_mean))
            spec.image_std = list(saved.get("image_std", spec.image_std))

    def load(self, directory: Path) -> Any:
        from fmkit.model import quiet_transformers
        from fmkit_fusion.model import FusionModel

        with quiet_transformers():
            return FusionModel.from_pretrained(directory, trust_remote_code=self.run.config.trust_remote_code)

    def member_metrics(self, model: Any, prepared: Any, splits: dict[str, list], hardeners: list) -> dict[str, Any]:
        from fmkit_fusion.report import modality_metrics

        return {"modalities": modality_metrics(self.method, model, prepared, splits, hardeners)}
