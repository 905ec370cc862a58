"""``wordswap``: word substitutions that leave readable text, to score a model under attack and to train
on (ner and classify). The attack itself is ``words.WordAttack``; this module holds the plugin, its
options and the training schedule."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import (IGNORE, Batch, Example, FmkitError, Run, encode, forward_logits, hookimpl, prediction_batches,
                          task_loss)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fmkit_harden.words import WordAttack

TEXT_TASKS = ("ner", "classify")


class WordSwapOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: float = Field(0.15, gt=0, le=1, description="the largest share of an example's words the attack may "
                          "replace, rounded down (at 0.15 a sentence needs 7 words for one swap)")
    queries: int = Field(60, ge=1, description="forward passes the attack may spend on one example (the gradient "
                         "pass included)")
    candidates: int = Field(5, ge=1, description="substitutes tried in real forward passes at each word, those with "
                            "the best first-order estimate of the loss increase")
    neighbours: int = Field(30, ge=1, description="a word's substitutes are its nearest whole words in the model's "
                            "input embeddings (cosine), this many")
    train_fraction: float = Field(0.2, gt=0, le=1, description="training: the share of training examples attacked "
                                  "anew each epoch, against the model as it is then; their adversarial copies join "
                                  "the batches of that epoch")
    start_epoch: int = Field(2, ge=1, description="training: the first epoch with adversarial copies (an untrained "
                             "head makes meaningless attacks)")


class WordSwap:
    """Word substitution attack (HotFlip-style, gradient-guided) for ner and classify, and training on it.

    Ebrahimi et al. 2018: the gradient at each word's first sub-token estimates which whole-word
    substitute raises the loss most; the best candidates are checked in real forward passes, greedily,
    within a budget of changed words and of queries. NER never changes a word inside a gold entity.
    Training adds adversarial copies of a share of the training examples, made anew each epoch
    against the current model, to that epoch's batches (docs/hardening.md)."""

    name = "wordswap"
    stage = "harden"
    Options = WordSwapOptions

    def __init__(self, options: WordSwapOptions):
        self.options = options

    def check(self, config: Any) -> None:
        refuse_other_tasks(self.name, config.task)

    @hookimpl
    def fmkit_harden(self, run: Run) -> WordSwapHardener:
        refuse_other_tasks(self.name, run.task.kind)
        return WordSwapHardener(self.name, self.options, run)

    @hookimpl
    def fmkit_plan(self, run: Run) -> list[str]:
        o = self.options
        return [f"from epoch {o.start_epoch}: each epoch attacks {o.train_fraction:.0%} of the training examples "
                f"against the current model (up to {o.queries} forward passes each) and adds their adversarial "
                f"copies to its batches; robust evaluation: word swaps on the test split, at most "
                f"{o.budget:.0%} of each example's words"]


def refuse_other_tasks(plugin: str, task: str) -> None:
    if task not in TEXT_TASKS:
        raise FmkitError(f"{plugin}: attacks the words of ner and classify examples, not {task} inputs; use pgd or fgsm")


class WordSwapHardener:
    """Evaluation: ``attack_examples`` rewrites labelled examples. Training: each batch also carries its
    share of the epoch's adversarial copies, regenerated at the first batch of every epoch from
    ``start_epoch`` on. An epoch is counted in rows: as many as the training split has windows."""

    attack = None  # no batch-level attack: evaluation goes through attack_examples

    def __init__(self, name: str, options: WordSwapOptions, run: Run):
        from fmkit_harden.words import WordAttack

        self.name, self.options, self.run = name, options, run
        self.words: WordAttack = WordAttack(run.task, run.foundation.tokenizer, run.config.train.max_length,
                                            budget=options.budget, queries=options.queries,
                                            candidates=options.candidates, neighbours=options.neighbours)
        self._model: Any = None
        self._rows_per_epoch = 0

    def attack_examples(self, model: nn.Module, examples: Sequence[Example]) -> tuple[list[Example], dict[str, float]]:
        """The examples as the attack rewrote them (same order and labels), and what it cost: the mean share
        of words changed, forward passes and seconds per example."""
        started = time.perf_counter()
        done = [self.words.attack(model, e) for e in examples]
        count = max(len(done), 1)
        return [d.example for d in done], {
            "words_changed": round(sum(d.changed / d.words for d in done if d.words) / count, 4),
            "queries": round(sum(d.queries for d in done) / count, 2),
            "seconds_per_example": round((time.perf_counter() - started) / count, 4)}

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """The loss on the batch together with its share of adversarial copies, in one forward pass."""
        self._follow(model)
        epoch = self._rows // self._rows_per_epoch + 1
        if epoch >= self.options.start_epoch and epoch != self._pool_epoch:
            self.refresh(model, epoch)
        self._rows += len(batch["input_ids"])
        rows = self._take(len(batch["input_ids"]))
        if rows:
            (_, adversarial), = prediction_batches(rows, len(rows), self.words.pad_id, batch["input_ids"].device)
            batch = concatenated(batch, adversarial, self.words.pad_id)
        loss = task_loss(forward_logits(model, batch), batch)
        backward(loss)
        return loss.detach()

    def _follow(self, model: nn.Module) -> None:
        """A new member (another model) starts its own schedule."""
        if model is self._model:
            return
        self._model, self._rows, self._pool, self._pool_epoch, self._next, self._owed = model, 0, [], 0, 0, 0.0
        if not self._rows_per_epoch:
            data = self.run.data.train
            self._rows_per_epoch = max(len(encode(self.run.task, data, self.words.tokenizer, self.words.max_length)), 1)

    def refresh(self, model: nn.Module, epoch: int) -> None:
        """Attack ``train_fraction`` of the training examples (a fresh sample each epoch) against the model
        as it is now, in eval mode; their changed copies are this epoch's pool."""
        from torch import nn

        train = self.run.data.train
        rng = random.Random(self.run.seed * 1_000_003 + epoch)
        chosen = rng.sample(range(len(train)), max(1, round(self.options.train_fraction * len(train))))
        base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        started, training = time.perf_counter(), base.training
        base.eval()
        try:
            attacked = [self.words.attack(base, train[i]) for i in chosen]
        finally:
            base.train(training)
        copies = [a.example for a in attacked if a.changed]
        self._pool = encode(self.run.task, copies, self.words.tokenizer, self.words.max_length)
        rng.shuffle(self._pool)
        self._pool_epoch, self._next, self._owed = epoch, 0, 0.0
        seconds = time.perf_counter() - started
        self.run.log("wordswap", epoch=epoch, attacked=len(chosen), changed=len(copies), seconds=round(seconds, 2))
        self.run.say(f"{self.name}: epoch {epoch}: {len(copies)} of {len(chosen)} attacked training examples changed "
                     f"({seconds:.0f}s); they join this epoch's batches")

    def _take(self, batch_rows: int) -> list:
        """The next adversarial rows: over an epoch, the pool once, spread over the batches by their size."""
        if not self._pool:
            return []
        self._owed += batch_rows * len(self._pool) / self._rows_per_epoch
        count, self._owed = int(self._owed), self._owed - int(self._owed)
        rows = [self._pool[(self._next + k) % len(self._pool)] for k in range(count)]
        self._next += count
        return rows


def concatenated(batch: Batch, extra: Batch, pad_id: int) -> Batch:
    """``batch`` with ``extra``'s rows appended, both padded to the wider one; extra rows weigh 1 in a
    weighted batch."""
    import torch
    import torch.nn.functional as F

    width = max(batch["input_ids"].shape[1], extra["input_ids"].shape[1])
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE}
    out = {}
    for key, value in batch.items():
        if key == "weights":
            out[key] = torch.cat([value, torch.ones(len(extra["input_ids"]), dtype=value.dtype, device=value.device)])
            continue
        if key not in extra or key not in fill:
            raise FmkitError(f"wordswap: cannot add adversarial rows to batches with {key!r}")
        parts = [value, extra[key].to(value.device)]
        if value.dim() == 2:
            parts = [F.pad(p, (0, width - p.shape[1]), value=fill[key]) for p in parts]
        out[key] = torch.cat(parts)
    return out

