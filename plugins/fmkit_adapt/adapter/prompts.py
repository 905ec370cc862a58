"""What prompt-style PEFT methods need to work on fmkit's tasks.

* Prompt tuning prepends virtual tokens to the input, so a token-classification model returns
  ``num_virtual_tokens`` extra logits in front: they are cut off, so that logit i is word-piece i
  again (training loss and predictions both see the aligned logits).
* Prefix tuning passes its key/values as ``past_key_values``; transformers 5 encoders name that
  argument ``cache`` and PEFT 0.21 refuses a model whose forward does not list
  ``past_key_values``. The model's forward is given that name, forwarded as ``cache``.
"""

from __future__ import annotations

import inspect
from typing import Any

from fmkit.plugin import FmkitError


def check_positions(model: Any, virtual_tokens: int, max_length: int) -> None:
    """Virtual tokens take position embeddings too: refuse a window length that cannot fit beside them."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and virtual_tokens + max_length > positions:
        raise FmkitError(
            f"adapter.num_virtual_tokens={virtual_tokens} plus train.max_length={max_length} exceed the model's "
            f"{positions} positions: lower one of them (e.g. --set train.max_length={positions - virtual_tokens})")


def accept_past_key_values(model: Any) -> None:
    """Let PEFT's prefix tuning find ``past_key_values`` on a transformers-5 model (see module doc)."""
    if "past_key_values" in inspect.signature(model.forward).parameters:
        return
    original = model.forward

    def forward(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        return original(*args, cache=past_key_values, **kwargs)

    model.forward = forward


def drop_virtual_logits(peft_model: Any) -> None:
    """Cut the logits of prepended virtual tokens so that they align with the input again."""

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        inputs = kwargs.get("input_ids", args[0] if args else None)
        inputs = kwargs.get("inputs_embeds") if inputs is None else inputs
        extra = output.logits.shape[1] - inputs.shape[1] if inputs is not None and output.logits.dim() == 3 else 0
        if extra > 0:
            output.logits = output.logits[:, extra:]
        return output

    peft_model.register_forward_hook(hook, with_kwargs=True)
