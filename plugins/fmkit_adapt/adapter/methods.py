"""The PEFT methods the ``adapter`` plugin offers: which options each reads, its learning rate,
and the ``peft`` config it becomes."""

from __future__ import annotations

from typing import Any

from fmkit_adapt.parts import head_modules, target_pattern

METHODS = ("lora", "ia3", "loha", "lokr", "adalora", "prefix", "prompt")
LOW_RANK = frozenset({"lora", "loha", "lokr", "adalora"})
PROMPT = frozenset({"prefix", "prompt"})
OPTION_METHODS = {
    "r": LOW_RANK, "alpha": LOW_RANK, "dropout": LOW_RANK,
    "target_modules": LOW_RANK | {"ia3"}, "num_virtual_tokens": PROMPT,
}
# train.lr when the user sets none. An adapter trains few, mostly fresh weights whose updates are
# scaled down (alpha / r, IA3's unit vectors, prompt embeddings), so it wants a far higher rate than
# full fine-tuning. LoRA's was chosen on MiniLM / WNUT-16 dev across three seeds (docs/adapt.md); the
# others are the usual ranges of each method's paper, checked to train on the tiny test model.
LEARNING_RATES = {"lora": 2e-3, "ia3": 1e-2, "loha": 1e-3, "lokr": 3e-3, "adalora": 1e-3, "prefix": 1e-2,
                  "prompt": 3e-2}


def ia3_suffixes(model_type: str) -> tuple[list[str] | None, list[str]]:
    """(targets, feed-forward targets) of the (IA)^3 paper for this architecture, as PEFT tabulates
    them: keys, values and the feed-forward output. Unknown architectures: every linear layer."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    return TARGETS.get(model_type), FEEDFORWARD.get(model_type, [])


def peft_config(options: Any, model: Any, task_kind: str, total_steps: int) -> Any:
    """The ``peft`` config for ``options.method`` on ``model``; targets are checked against the model."""
    import peft

    method = options.method
    common: dict[str, Any] = {
        "task_type": peft.TaskType.TOKEN_CLS if task_kind == "ner" else peft.TaskType.SEQ_CLS,
        "modules_to_save": head_modules(model),  # the head trains in full and is saved with the adapter
    }
    if method in PROMPT:
        if method == "prefix":
            return peft.PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, **common)
        return peft.PromptTuningConfig(num_virtual_tokens=options.num_virtual_tokens,
                                       prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB, **common)
    if method == "ia3":
        targets, feedforward = ia3_suffixes(getattr(model.config, "model_type", ""))
        targets = options.target_modules or targets
        feedforward = [s for s in feedforward if s in targets] if targets else []
        return peft.IA3Config(target_modules=target_pattern(model, targets),
                              feedforward_modules=target_pattern(model, feedforward) if feedforward else [], **common)
    common["target_modules"] = target_pattern(model, options.target_modules)
    if method == "lora":
        return peft.LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, **common)
    if method == "adalora":  # starts at 1.5 r per layer and prunes to an average of r
        return peft.AdaLoraConfig(init_r=options.r + options.r // 2 + 1, target_r=options.r, lora_alpha=options.alpha,
                                  lora_dropout=options.dropout, total_step=max(total_steps, 1),
                                  tinit=total_steps // 10, tfinal=total_steps // 5, **common)
    config_class = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    return config_class(r=options.r, alpha=options.alpha, rank_dropout=options.dropout, **common)
