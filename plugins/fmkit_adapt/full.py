"""``full``: full fine-tuning, the default adapt plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fmkit.plugin import ModelBuilder, Run, hookimpl


class Full:
    """Full fine-tuning: every parameter of the encoder and the head trains."""

    name, stage = "full", "adapt"
    provides = frozenset({"merge"})  # a fine-tuned model is its own plain weights

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: Options):
        self.options = options

    @hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model

    @hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        return builder.load(directory)
