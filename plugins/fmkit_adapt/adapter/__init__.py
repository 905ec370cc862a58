"""``adapter``: parameter-efficient fine-tuning with PEFT on any transformers encoder. One folder, as in
PEFT: the methods it offers (``methods``), what prompt-style methods need (``prompts``), AdaLoRA's rank
budget (``adalora``) and ensemble members as adapters on one shared backbone (``shared_backbone``)."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import FmkitError, ModelBuilder, Run, SharedBackbone, count_parameters, hookimpl, quiet_transformers
from fmkit_adapt.adapter.methods import LEARNING_RATES, METHODS, OPTION_METHODS, PROMPT, peft_config


class Adapter:
    """PEFT adapter on the frozen foundation: LoRA (default), IA3, LoHa, LoKr, AdaLoRA, prefix or prompt tuning.

    The task head trains in full and is saved with the adapter (PEFT ``modules_to_save``); the run saves the
    plain model under it beside it, so ``AutoModelFor<Task>.from_pretrained(run/model)`` restores the whole
    task model without fmkit, and ``adapter_config.json`` names the base model by its hub id where it is known.
    """

    name, stage = "adapter", "adapt"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        method: Literal[METHODS] = Field("lora", description="PEFT method: " + ", ".join(METHODS))
        r: int = Field(8, gt=0, description="rank of the update (lora, loha, lokr; adalora: average rank left "
                                            "after pruning from 1.5 r)")
        alpha: float = Field(16.0, gt=0, description="scaling: the update is multiplied by alpha / r "
                                                     "(lora, adalora, loha, lokr)")
        dropout: float = Field(0.1, ge=0, lt=1, description="lora, adalora: dropout on the adapter input; "
                                                            "loha, lokr: rank dropout")
        target_modules: list[str] | None = Field(
            None, min_length=1, description="backbone linear layers to adapt, by name suffix (e.g. [query, value]); none = "
                              "every linear layer of the backbone (ia3: keys, values, feed-forward outputs)")
        num_virtual_tokens: int = Field(20, gt=0, description="prefix, prompt: virtual tokens in front of the input")

    def __init__(self, options: Options):
        self.options = options

    @property
    def train_defaults(self) -> dict[str, Any]:
        """Adapters need a higher learning rate than full fine-tuning (see fmkit_adapt.adapter.methods). fp32
        under train.precision=auto: bf16 autocast was measured on full fine-tuning only (README, Performance)."""
        return {"lr": LEARNING_RATES[self.options.method], "precision": "no"}

    def check(self, config: Any) -> None:
        method = self.options.method
        unused = [f"adapter.{o}" for o in sorted(self.options.model_fields_set)
                  if o in OPTION_METHODS and method not in OPTION_METHODS[o]]
        if unused:
            raise FmkitError(f"{', '.join(unused)} does not apply to adapter.method={method}")

    @property
    def provides(self) -> frozenset[str]:
        """Trained adapters merge into the backbone's weights, except virtual tokens (prefix, prompt)."""
        return frozenset() if self.options.method in PROMPT else frozenset({"merge"})

    @hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        """Wrap ``model`` in a PeftModel with a new adapter; only the adapter and the head train."""
        import peft

        from fmkit_adapt.adapter.adalora import RankAllocation
        from fmkit_adapt.adapter.prompts import accept_past_key_values, check_positions, drop_virtual_logits

        method = self.options.method
        if method in PROMPT:
            check_positions(model, self.options.num_virtual_tokens, run.config.train.max_length)
        if method == "prefix":
            accept_past_key_values(model)
        config = peft_config(self.options, model, run.task.kind, self._total_steps(run))
        with peft_quietly():
            model = peft.get_peft_model(model, config)
        if run.foundation is not None:  # after get_peft_model, which sets the model's own path
            config.base_model_name_or_path = base_model_name(run)
        # fmkit's adapters leave the embeddings as they are: saving never has PEFT ask the hub whether the
        # base model's vocabulary changed (a network call, and a warning offline, for a base named by hub id)
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
        drop_virtual_logits(model)
        if method == "adalora":
            RankAllocation(model)
        trainable, total = count_parameters(model)
        run.say(f"adapter: {method} trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
        return model

    @hookimpl
    def fmkit_adapt_share(self, run: Run, model: Any) -> SharedBackbone | None:
        """Members as named adapters on ``model``'s backbone (lora, ia3, loha, lokr: they sit side by side)."""
        from fmkit_adapt.adapter.shared_backbone import PeftBackbone

        return PeftBackbone.of(model)

    @hookimpl
    def fmkit_adapt_base(self, run: Run, model: Any) -> Any:
        """The backbone with the adapter taken out (and a head), which the standard transformers call loads the
        adapter onto; none for virtual tokens, which transformers cannot load beside a base."""
        if self.options.method in PROMPT:
            return None
        from fmkit_adapt.adapter.shared_backbone import unloaded

        return unloaded(model)

    @hookimpl
    def fmkit_adapt_merge(self, run: Run, model: Any) -> Any:
        if self.options.method in PROMPT:
            raise FmkitError(f"adapter.method={self.options.method} trains virtual tokens, which merge into no weight")
        from fmkit_adapt.adapter.shared_backbone import merged

        return merged(model)

    def _total_steps(self, run: Run) -> int:
        """Optimizer steps of the run (AdaLoRA schedules its rank budget over them)."""
        train = run.config.train
        return math.ceil(len(run.data.train) / train.batch_size) * train.epochs if run.data else 0

    @hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        import peft

        from fmkit_adapt.adapter.prompts import accept_past_key_values, drop_virtual_logits

        if not (Path(directory) / "adapter_config.json").is_file():
            raise FmkitError(f"{directory}: no saved adapter (adapter_config.json missing)")
        base = builder.build()
        if self.options.method == "prefix":
            accept_past_key_values(base)
        with peft_quietly():
            model = peft.PeftModel.from_pretrained(base, directory)
        drop_virtual_logits(model)
        return model


def base_model_name(run: Run) -> str:
    """How ``adapter_config.json`` names the base model: the foundation's hub id where it is known, which
    loads anywhere; else the path it was loaded from."""
    return run.foundation.origin or run.foundation.path


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT models are made without transformers' load reports and without the FutureWarning that PEFT's
    own check of the deprecated ``is_gradient_checkpointing`` raises (PEFT 0.21, transformers 5)."""
    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield
