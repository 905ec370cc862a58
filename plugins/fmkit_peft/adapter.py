"""``adapter``: parameter-efficient fine-tuning with PEFT on any transformers encoder."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import fmkit
from fmkit.errors import FmkitError
from fmkit.types import ModelBuilder, Run
from fmkit_peft.methods import LEARNING_RATES, METHODS, OPTION_METHODS, PROMPT, peft_config


class Adapter:
    """PEFT adapter on the frozen foundation: LoRA (default), IA3, LoHa, LoKr, AdaLoRA, prefix or prompt tuning.

    The task head trains in full and is saved with the adapter (PEFT ``modules_to_save``), so
    ``PeftModel.from_pretrained(base, run/model)`` restores the whole task model without fmkit.
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
        """Adapters need a higher learning rate than full fine-tuning (see fmkit_peft.methods)."""
        return {"lr": LEARNING_RATES[self.options.method]}

    def check(self, config: Any) -> None:
        method = self.options.method
        unused = [f"adapter.{o}" for o in sorted(self.options.model_fields_set)
                  if o in OPTION_METHODS and method not in OPTION_METHODS[o]]
        if unused:
            raise FmkitError(f"{', '.join(unused)} does not apply to adapter.method={method}")

    @fmkit.hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        return self.prepare(run, model)

    def prepare(self, run: Run, model: Any, adapter_name: str = "default") -> Any:
        """Wrap ``model`` in a PeftModel with a new adapter, or add a named adapter to a PeftModel
        that already holds others (members sharing one frozen backbone)."""
        import peft

        from fmkit.model import count_parameters
        from fmkit_peft.adalora import RankAllocation
        from fmkit_peft.prompts import accept_past_key_values, check_positions, drop_virtual_logits

        method = self.options.method
        shared = isinstance(model, peft.PeftModel)
        base = model.get_base_model() if shared else model
        if method in PROMPT:
            check_positions(base, self.options.num_virtual_tokens, run.config.train.max_length)
        if method == "prefix":
            accept_past_key_values(base)
        config = peft_config(self.options, base, run.task.kind, self._total_steps(run))
        if shared:
            model.add_adapter(adapter_name, config)
            model.set_adapter(adapter_name)
        else:
            with warnings.catch_warnings():  # PEFT asks transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model = peft.get_peft_model(model, config, adapter_name=adapter_name)
            drop_virtual_logits(model)
        if method == "adalora":
            RankAllocation(model)
        trainable, total = count_parameters(model)
        run.say(f"adapter: {method} trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
        return model

    def _total_steps(self, run: Run) -> int:
        """Optimizer steps of the run (AdaLoRA schedules its rank budget over them)."""
        train = run.config.train
        return math.ceil(len(run.data.train) / train.batch_size) * train.epochs if run.data else 0

    @fmkit.hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        import peft

        from fmkit.model import quiet_transformers
        from fmkit_peft.prompts import accept_past_key_values, drop_virtual_logits

        if not (Path(directory) / "adapter_config.json").is_file():
            raise FmkitError(f"{directory}: no saved adapter (adapter_config.json missing)")
        base = builder.build()
        if self.options.method == "prefix":
            accept_past_key_values(base)
        with quiet_transformers():
            model = peft.PeftModel.from_pretrained(base, directory)
        drop_virtual_logits(model)
        return model
