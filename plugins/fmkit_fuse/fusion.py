"""What every fusion method shares: its options, the plugin body (``FusionPlugin``) and the ModelBuilder
it returns (``FusionBuilder``). A method is a ``FusionPlugin`` subclass in a module of its own that names
itself and its head (see ``FusionPlugin.head_class``); nothing here knows the methods by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fmkit.plugin import FmkitError, Foundation, Run, RunConfig, Scorer, hookimpl, quiet_transformers

if TYPE_CHECKING:
    from torch import nn

    from fmkit_fuse.model import FusionModel, FusionSpec

CNN = "cnn"
PRODUCTS_OPTION = Field(True, description="also feed the head the elementwise products of the batch-standardised "
                                          "pooled modalities, so that it can learn labels that need the modalities "
                                          "together (an XOR)")


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


class FusionPlugin:
    """The body of every fuse plugin: checks, training defaults and the fuse hook. A subclass is one
    fusion method: its ``name``, a docstring (what ``fmkit plugins`` shows), optionally its own
    ``Options`` (a FusionOptions subclass) and its ``head_class``."""

    stage = "fuse"
    name = ""
    Options = FusionOptions
    # The pretrained text encoder keeps the core's train.lr; the image encoder, feature encoder and head
    # start from scratch and take larger steps (docs/fusion.md: chosen on the dev splits). fp32 under
    # train.precision=auto: fusion was tuned and measured in fp32, bf16 autocast on clean text fine-tuning only
    train_defaults = {"new_lr": 1e-3, "precision": "no"}

    def __init__(self, options: FusionOptions):
        self.options = options

    @staticmethod
    def head_class() -> type[nn.Module]:
        """The method's fusion head: an ``nn.Module`` class built as ``Head(spec: FusionSpec)`` (after the
        modality encoders, so weights initialise in a fixed order), whose ``forward(parts: list[Part])``
        returns (logits N x classes, contributions N x modalities with rows summing to 1), and whose
        ``measure`` attribute says what a contribution is (the per-modality report prints it).

        A method, not a class attribute, because the built-in heads subclass ``nn.Module``: their
        modules define them inside a cached function, so that importing a plugin module (as ``fmkit
        plugins`` does for every plugin) does not import torch."""
        raise NotImplementedError("a fusion method names its head_class")

    def check(self, config: RunConfig) -> None:
        if config.task != "multimodal":
            raise FmkitError(f"plugin {self.name!r} fuses modalities: use it with --task multimodal")
        encoder = self.options.image_encoder
        if encoder != CNN and not (Path(encoder) / "config.json").is_file():
            raise FmkitError(f"{self.name}.image_encoder {encoder}: not 'cnn' nor a local model directory "
                             "(no config.json)")

    @hookimpl
    def fmkit_fuse(self, run: Run, foundation: Foundation) -> FusionBuilder:
        return FusionBuilder(run, foundation, self)


class FusionBuilder:
    """Builds and reloads the FusionModels of one fusion method for the run's task (the ModelBuilder of
    the fuse stage). The method's plugin supplies the head, so a saved model, whose config names the
    method, reloads through the builder of the run's own fuse plugin."""

    def __init__(self, run: Run, foundation: Foundation, plugin: FusionPlugin):
        self.run, self.foundation, self.plugin = run, foundation, plugin

    def build(self) -> FusionModel:
        from transformers import AutoModel

        from fmkit_fuse.model import FusionModel, FusionSpec

        task, o = self.run.task, self.plugin.options
        inputs = task.inputs
        own = {k: v for k, v in o.model_dump().items()  # a method's own options that shape its head (heads, rank)
               if k not in FusionOptions.model_fields and k in FusionSpec.__dataclass_fields__}
        spec = FusionSpec(self.plugin.name, task.labels, ["text", *inputs["modalities"]],
                          feature_count=inputs.get("feature_count", len(inputs.get("feature_mean", []))),
                          category_sizes=[len(levels) + 1 for levels in inputs.get("category_levels", [])],
                          image_size=inputs["image_size"], missing=inputs["missing"], dim=o.dim, dropout=o.dropout,
                          **own)
        trust = self.run.config.trust_remote_code
        image = None
        with quiet_transformers():
            text = AutoModel.from_pretrained(self.foundation.path, trust_remote_code=trust)
            if "image" in inputs["modalities"] and o.image_encoder != CNN:
                image = AutoModel.from_pretrained(o.image_encoder, trust_remote_code=trust)
                self._describe_vision(spec, image)
        spec.image_mean = o.image_mean or spec.image_mean
        spec.image_std = o.image_std or spec.image_std
        return FusionModel(spec, self.plugin.head_class(), text, image)

    def _describe_vision(self, spec: FusionSpec, encoder: nn.Module) -> None:
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
        processor = Path(self.plugin.options.image_encoder) / "preprocessor_config.json"
        if processor.is_file():
            saved = json.loads(processor.read_text(encoding="utf-8"))
            spec.image_mean = list(saved.get("image_mean", spec.image_mean))
            spec.image_std = list(saved.get("image_std", spec.image_std))

    def load(self, directory: Path) -> FusionModel:
        from fmkit_fuse.model import FusionModel

        with quiet_transformers():
            return FusionModel.from_pretrained(directory, self.plugin.head_class(),
                                               trust_remote_code=self.run.config.trust_remote_code)

    def member_metrics(self, model: nn.Module, scorer: Scorer, splits: dict[str, list],
                       hardeners: list) -> dict[str, Any]:
        from fmkit_fuse.report import modality_metrics

        return {"modalities": modality_metrics(self.plugin.head_class().measure, model, scorer, splits, hardeners)}
