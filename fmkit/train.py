"""The one training loop (HF Accelerate): AdamW with linear warm-up/decay, gradient clipping,
length-bucketed batches, best-epoch selection on dev, and the harden stage plugged into each step.

Seeded and deterministic on CPU. ``accelerate launch -m fmkit run ...`` makes it data-parallel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fmkit.config import TrainConfig
from fmkit.data.batching import BucketBatchSampler, Collator, IndexedFeatures
from fmkit.data.encode import IGNORE
from fmkit.evaluate import model_inputs
from fmkit.types import Hardener, Run


def task_loss(logits: Any, batch: dict) -> Any:
    """Cross-entropy over labelled tokens (NER) or examples, weighted per example when the batch
    carries ``weights`` (boosting). Hardeners call this on their perturbed logits too."""
    import torch.nn.functional as F

    labels = batch["labels"]
    weights = batch.get("weights")
    losses = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction="none")
    valid = (labels.flatten() != IGNORE).float()
    if weights is not None:
        per_row = labels.shape[1] if labels.dim() == 2 else 1
        valid = valid * weights.repeat_interleave(per_row)
    return (losses * valid).sum() / (labels.flatten() != IGNORE).sum().clamp(min=1)


def forward_logits(model: Any, batch: dict) -> Any:
    return model(**model_inputs(batch)).logits


_ACCELERATORS: dict[str, Any] = {}


def accelerator_for(precision: str) -> Any:
    """One Accelerator per process (Accelerate keeps global state)."""
    if precision not in _ACCELERATORS:
        from accelerate import Accelerator

        _ACCELERATORS[precision] = Accelerator(mixed_precision=precision)
    return _ACCELERATORS[precision]


@dataclass
class TrainReport:
    epochs_run: int
    best_epoch: int
    best_score: float
    best_dev: dict[str, Any]
    seconds: float  # wall time, dev evaluations included
    sentences_per_second: float  # training throughput: windows per second spent in training steps


def train(
    run: Run,
    model: Any,
    data: IndexedFeatures,
    evaluate_dev: Callable[[Any], dict[str, Any]],
    *,
    settings: TrainConfig,
    seed: int,
    pad_id: int,
    label: str = "",
    weights: Sequence[float] | None = None,
    hardeners: Sequence[Hardener] = (),
) -> TrainReport:
    """Train ``model`` in place on ``data``; keep the weights of the epoch with the best dev score."""
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    set_seed(seed)
    accelerator = accelerator_for(settings.precision)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:  # nothing left to train (e.g. a head fitted in closed form): score it once
        model.eval()
        dev = evaluate_dev(model)
        return TrainReport(0, 0, dev[run.task.primary_metric], dev, 0.0, 0.0)
    no_decay = [p for n, p in named if p.ndim < 2]
    decay = [p for n, p in named if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    sampler = BucketBatchSampler(data.lengths, settings.batch_size, shuffle=True, seed=seed)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=Collator(pad_id, weights))
    total_steps = len(sampler) * settings.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    backward_share = 1.0 / max(len(hardeners), 1)

    def backward(loss: Any) -> None:
        accelerator.backward(loss * backward_share)

    best_score, best_epoch, best_state, best_dev = -math.inf, 0, None, {}
    stale, seen, started, stepping = 0, 0, time.perf_counter(), 0.0  # stepping: time in training steps only
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(loader, desc=f"{label}epoch {epoch}/{settings.epochs}", leave=False,
                   disable=True if not (settings.progress and accelerator.is_main_process) else None,  # None: off without a TTY
                   dynamic_ncols=True)
        epoch_start = time.perf_counter()
        for step, batch in enumerate(bar):
            if hardeners:
                loss = sum(h.train_step(model, batch, backward) for h in hardeners) * backward_share
            else:
                loss = task_loss(forward_logits(model, batch), batch)
                accelerator.backward(loss)
            accelerator.clip_grad_norm_([p for _, p in named], settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(batch["input_ids"])
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                from fmkit.errors import FmkitError

                raise FmkitError(f"{label}loss became {loss_value} at epoch {epoch} step {step + 1}; "
                                 "lower train.lr or check the data")
            rate = seen / (stepping + time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss_value:.4f}", sent_s=f"{rate:.0f}")
            run.log("step", member=label.strip(": ") or None, epoch=epoch, step=step + 1, loss=round(loss_value, 5),
                    lr=scheduler.get_last_lr()[0])
        stepping += time.perf_counter() - epoch_start
        model.eval()  # dev scores select the epoch: no dropout while scoring
        dev = evaluate_dev(accelerator.unwrap_model(model))
        score = dev[run.task.primary_metric]
        run.log("epoch", member=label.strip(": ") or None, epoch=epoch,
                **{k: v for k, v in dev.items() if k != "report"})
        if accelerator.is_main_process:
            from fmkit.console import info

            info(f"{label}epoch {epoch}/{settings.epochs}: loss {loss_value:.4f}, dev {run.task.primary_metric} {score:.4f}"
                 + (" *" if score > best_score else ""))
        if score > best_score:
            best_score, best_epoch, best_dev, stale = score, epoch, dev, 0
            best_state = {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()
                          if p.requires_grad}
        else:
            stale += 1
            if settings.patience and stale >= settings.patience:
                break
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        with torch.no_grad():
            for n, p in unwrapped.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    seconds = time.perf_counter() - started
    unwrapped.eval()
    return TrainReport(epoch, best_epoch, best_score, best_dev, seconds, seen / stepping if stepping else 0.0)
