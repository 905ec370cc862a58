"""``probe``: the frozen foundation as a feature extractor, the cheapest baseline of a task."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import fmkit
from fmkit.errors import FmkitError
from fmkit.types import ModelBuilder, Run

SKLEARN_OPTIONS = ("C", "max_iter")


class Probe:
    """Frozen foundation, trained head: a linear probe on cached backbone features, or scikit-learn's LogisticRegression.

    The backbone runs once per distinct input; every later epoch trains only the head on the
    stored features. The saved model is an ordinary transformers checkpoint.
    """

    name, stage = "probe", "adapt"
    # A lone linear head on fixed features takes large steps, and its epochs are cheap (cached
    # features): tuned on WNUT-16 dev (docs/adapt.md).
    train_defaults = {"lr": 5e-2, "epochs": 30}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        head: Literal["linear", "sklearn"] = Field(
            "linear", description="linear: the task model's head trains on cached features in the core loop; "
                                  "sklearn: LogisticRegression fitted on them and written into the head's output "
                                  "layer (no training loop; always on all training rows)")
        C: float = Field(1.0, gt=0, description="sklearn: inverse regularisation strength of LogisticRegression")
        max_iter: int = Field(1000, ge=1, description="sklearn: solver iterations")

    def __init__(self, options: Options):
        self.options = options

    def check(self, config: Any) -> None:
        unused = [f"probe.{o}" for o in SKLEARN_OPTIONS if o in self.options.model_fields_set]
        if unused and self.options.head != "sklearn":
            raise FmkitError(f"{', '.join(unused)} applies to probe.head=sklearn only")

    @fmkit.hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        from fmkit.model import count_parameters
        from fmkit_peft.features import CachedBackbone, fit_logistic_head, last_linear
        from fmkit_peft.parts import backbone, head_modules

        _, encoder = backbone(model)
        head = head_modules(model)
        model.requires_grad_(False)
        for name in head:
            getattr(model, name).requires_grad_(True)
        encoder.forward = CachedBackbone(encoder)
        if self.options.head == "sklearn":
            fit = fit_logistic_head(run, model, last_linear(model, head), self.options.C, self.options.max_iter)
            model.requires_grad_(False)  # nothing left for the training loop
            run.say(f"probe: LogisticRegression on {int(fit['examples']):,} training "
                    f"{'tokens' if run.task.kind == 'ner' else 'examples'}, training accuracy {fit['train_accuracy']:.4f}")
            run.log("probe", **fit)
        trainable, total = count_parameters(model)
        run.say(f"probe: frozen backbone; the head ({', '.join(head)}) trains {trainable:,} of {total:,} parameters")
        return model

    @fmkit.hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        return builder.load(directory)
