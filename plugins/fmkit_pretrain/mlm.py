"""``mlm``: domain-adaptive pretraining, i.e. masked-language-model training continued on unlabeled
text before the task stages (Gururangan et al. 2020, "Don't stop pretraining")."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import FmkitError, Foundation, Run, accelerator_for, hookimpl, quiet_transformers

BACKBONE_DIR = "mlm"  # inside the run directory


def read_corpus(path: Path) -> list[str]:
    """The non-blank lines of ``path``; at least two, since one is held out to measure the loss."""
    if not path.is_file():
        raise FmkitError(f"mlm.corpus: {path} does not exist")
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise FmkitError(f"mlm.corpus: {path} is not UTF-8 (byte {exc.start})") from None
    if len(texts) < 2:
        raise FmkitError(f"mlm.corpus: {path} has {'no text' if not texts else 'one line'}; it needs at least two "
                         "non-blank lines (one text per line, some held out)")
    return texts


def task_texts(run: Run) -> list[str]:
    """The training split's text without its labels (words joined for NER)."""
    texts = []
    for example in run.data.train:
        words = getattr(example, "words", None)
        text = " ".join(words) if words is not None else " ".join(filter(None, [example.text, example.text_pair]))
        if text.strip():
            texts.append(text)
    if len(texts) < 2:
        raise FmkitError("mlm: the training split has fewer than two texts to pretrain on; pass --set mlm.corpus=FILE")
    return texts


class MLM:
    """Continue masked-LM pretraining on unlabeled text (domain-adaptive) before the task stages."""

    name, stage = "mlm", "pretrain"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        corpus: Path | None = Field(None, description="unlabeled text, one text per line; none = the task's "
                                                      "training text without its labels")
        steps: int = Field(300, ge=1, description="optimizer steps of masked-LM training")
        batch_size: int = Field(32, ge=1, description="texts per step")
        lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW, 10% warm-up, linear decay)")
        mask_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens to predict (80% masked, "
                                                                      "10% random, 10% kept)")
        heldout: float = Field(0.1, gt=0, lt=1, description="share of the corpus held out to report the masked-LM "
                                                           "loss before and after")

    def __init__(self, options: Options):
        self.options = options

    def check(self, config: Any) -> None:
        if self.options.corpus is not None:
            read_corpus(self.options.corpus)

    @hookimpl(wrapper=True)
    def fmkit_pretrain(self, run: Run) -> Any:
        foundation = yield
        texts = read_corpus(self.options.corpus) if self.options.corpus is not None else task_texts(run)
        return pretrain(run, foundation, texts, self.options)


def pretrain(run: Run, foundation: Foundation, texts: list[str], options: MLM.Options) -> Foundation:
    """Train the foundation's masked-LM head and encoder on ``texts``; save the backbone in the run
    directory and return a Foundation pointing there."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    tokenizer = foundation.tokenizer
    model, fresh_head = masked_lm(run, foundation)
    started = time.perf_counter()
    order = list(range(len(texts)))
    random.Random(run.seed).shuffle(order)
    held = min(max(1, round(options.heldout * len(texts))), len(texts) - 1)
    encoded = tokenizer([texts[i] for i in order], truncation=True, max_length=run.config.train.max_length)["input_ids"]
    heldout_ids, train_ids = encoded[:held], encoded[held:]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=options.mask_probability)
    torch.manual_seed(run.seed)  # the same masks before and after
    heldout = [collate([{"input_ids": ids} for ids in heldout_ids[i:i + options.batch_size]])
               for i in range(0, held, options.batch_size)]
    model, before, after = train_masked_lm(run, model, train_ids, heldout, collate, options)
    target = save_backbone(run, foundation, model)
    run.log("mlm", texts=len(train_ids), heldout_texts=held, steps=options.steps, loss_before=round(before, 4),
            loss_after=round(after, 4), fresh_head=fresh_head, seconds=round(time.perf_counter() - started, 1))
    run.say(f"mlm: {options.steps} steps on {len(train_ids):,} texts; held-out masked-LM loss {before:.4f} -> "
            f"{after:.4f}" + (" (the checkpoint had no masked-LM head: a new one was trained)" if fresh_head else ""))
    return Foundation(path=str(target), tokenizer=tokenizer, source=foundation.source)


def masked_lm(run: Run, foundation: Foundation) -> tuple[Any, bool]:
    """The foundation as a masked-LM model, and whether its masked-LM head is new (the checkpoint had none)."""
    from transformers import AutoModelForMaskedLM

    if foundation.tokenizer.mask_token is None:
        raise FmkitError(f"mlm: the tokenizer of {foundation.source or foundation.path} has no mask token")
    try:
        with quiet_transformers():
            model, loading = AutoModelForMaskedLM.from_pretrained(
                foundation.path, trust_remote_code=run.config.trust_remote_code, output_loading_info=True)
    except ValueError as exc:
        raise FmkitError(f"mlm: {foundation.source or foundation.path} has no masked-LM form "
                         f"({str(exc).splitlines()[0]})") from None
    prefix = model.base_model_prefix
    return model, any(not k.startswith(prefix) for k in loading.get("missing_keys", []))


def train_masked_lm(run: Run, model: Any, train_ids: list, heldout: list[dict], collate: Any,
                    options: MLM.Options) -> tuple[Any, float, float]:
    """``options.steps`` AdamW steps (10% warm-up, linear decay) on freshly masked batches drawn without
    replacement; the trained model and its held-out loss before and after."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    accelerator = accelerator_for(run.config.train.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * options.steps), options.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = heldout_loss(model, heldout, accelerator.device)
    rng = random.Random(run.seed)
    queue: list[int] = []
    model.train()
    for _ in range(options.steps):
        batch_rows = []
        while len(batch_rows) < min(options.batch_size, len(train_ids)):
            if not queue:
                queue = rng.sample(range(len(train_ids)), len(train_ids))
            batch_rows.append(queue.pop())
        batch = collate([{"input_ids": train_ids[i]} for i in batch_rows])
        if not (batch["labels"] != -100).any():  # nothing masked in a tiny batch: no loss to learn from
            continue
        loss = model(**{k: v.to(accelerator.device) for k, v in batch.items()}).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return accelerator.unwrap_model(model), before, heldout_loss(model, heldout, accelerator.device)


def save_backbone(run: Run, foundation: Foundation, model: Any) -> Path:
    """The trained encoder saved alone in the run directory, with the checkpoint's own pooler (the
    masked-LM model has none), beside the tokenizer."""
    from transformers import AutoModel

    target = Path(run.directory) / BACKBONE_DIR
    with quiet_transformers():
        backbone = AutoModel.from_pretrained(foundation.path, trust_remote_code=run.config.trust_remote_code)
        backbone.load_state_dict(model.base_model.state_dict(), strict=False)
        backbone.save_pretrained(target)
        foundation.tokenizer.save_pretrained(target)
    return target


def heldout_loss(model: Any, batches: list[dict], device: Any) -> float:
    """Mean masked-LM loss per predicted token over fixed, pre-masked batches."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            tokens = int((batch["labels"] != -100).sum())
            if tokens:
                total += float(model(**{k: v.to(device) for k, v in batch.items()}).loss) * tokens
                count += tokens
    return total / max(count, 1)
