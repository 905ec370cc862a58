"""The one training loop (HF Accelerate): AdamW with linear warm-up/decay, gradient clipping,
length-bucketed batches, best-epoch selection on dev, and the harden stage plugged into each step.

Seeded and deterministic on CPU. ``accelerate launch -m fmkit run ...`` makes it data-parallel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fmkit.checkpoint import MemberCheckpoints, Position, rng_state, set_rng_state
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

        _ACCELERATORS[precision] = Accelerator(mixed_precision=precision, cpu=_launched_without_gpus())
    return _ACCELERATORS[precision]


def processes() -> Any:
    """This process's place among those ``accelerate launch`` started (one, when run plainly)."""
    from accelerate import PartialState

    return PartialState(cpu=_launched_without_gpus())


def _launched_without_gpus() -> bool:
    """Several processes on a machine without GPUs: Accelerate trains data-parallel over gloo only when
    told ``cpu=True``; otherwise each process would train a copy of its own."""
    import os

    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


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
    checkpoints: MemberCheckpoints | None = None,
    stop_after: int | None = None,
    start_after: int = 0,
) -> TrainReport:
    """Train ``model`` in place on ``data``; keep the weights of the epoch with the best dev score.
    With ``checkpoints``, continue from the last one and write one at each epoch end (and every
    ``train.checkpoint_every`` steps). ``stop_after``: run only that many epochs of the schedule of
    ``settings.epochs`` (its warm-up and part of its decay), e.g. a trunk that members continue;
    ``start_after``: skip that many, for a model that was trained through them (such a member)."""
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    set_seed(seed)
    accelerator = accelerator_for(settings.precision)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:  # nothing left to train (e.g. a head fitted in closed form): score it once
        model.to(accelerator.device).eval()
        dev = evaluate_dev(model)
        return TrainReport(0, 0, dev[run.task.primary_metric], dev, 0.0, 0.0)
    no_decay = [p for n, p in named if p.ndim < 2]
    decay = [p for n, p in named if p.ndim >= 2]
    # The fused kernel updates every tensor in one pass: on CPU the per-tensor default spends ~7x
    # longer per step on a MiniLM (a quarter of a training step); the Trainer uses it too.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for _, p in named)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, fused=fused or None,
    )
    sampler = BucketBatchSampler(data.lengths, settings.batch_size, shuffle=True, seed=seed)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=Collator(pad_id, weights))
    total_steps = len(sampler) * settings.epochs
    for group in optimizer.param_groups:  # what a scheduler started past step 0 (start_after) reads its peak from
        group.setdefault("initial_lr", group["lr"])
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps,
                                                last_epoch=len(sampler) * start_after - 1)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    backward_share = 1.0 / max(len(hardeners), 1)
    unwrapped = accelerator.unwrap_model(model)
    at, best_state, rng = Position(epoch=start_after + 1), None, None
    restored = checkpoints.load(unwrapped, optimizer, scheduler, accelerator.process_index) if checkpoints else None
    if restored is not None:
        at, best_state, rng = restored
        run.log("resume", member=label.strip(": ") or None, epoch=at.epoch, step=at.step)
        if at.step == 0:  # else once the interrupted epoch's loader has drawn its seed, as it had then
            set_rng_state(rng)
            rng = None
    start = Position(at.epoch, at.step)

    def checkpoint() -> None:
        if checkpoints is not None:
            from accelerate.utils import gather_object

            states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            checkpoints.save(unwrapped, optimizer, scheduler, at, best_state, states)

    def backward(loss: Any) -> None:
        accelerator.backward(loss * backward_share)

    started = time.perf_counter()  # at.stepping: time in training steps only
    epoch = at.epoch - 1
    for epoch in range(at.epoch, (stop_after or settings.epochs) + 1):
        if at.stopped:
            break
        sampler.set_epoch(epoch)
        loader.set_epoch(epoch)  # the prepared loader re-seeds the sampler with its own epoch count otherwise
        skip = start.step if epoch == start.epoch else 0  # batches done before an interruption
        model.train()
        bar = tqdm(accelerator.skip_first_batches(loader, skip) if skip else loader,
                   desc=f"{label}epoch {epoch}/{settings.epochs}", leave=False, initial=skip, total=len(loader),
                   disable=True if not (settings.progress and accelerator.is_main_process) else None,  # None: off without a TTY
                   dynamic_ncols=True)
        epoch_start = time.perf_counter()
        for step, batch in enumerate(bar, start=skip):
            if rng is not None:
                set_rng_state(rng)
                rng = None
            if hardeners:
                loss = sum(h.train_step(model, batch, backward) for h in hardeners) * backward_share
            else:
                loss = task_loss(forward_logits(model, batch), batch)
                accelerator.backward(loss)
            norm = accelerator.clip_grad_norm_([p for _, p in named], settings.max_grad_norm)
            loss_value = float(loss.detach())
            finite = _all_finite(accelerator, loss_value, norm)
            if finite:
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            at.seen += len(batch["input_ids"])
            at.epoch, at.step, at.steps_done = epoch, step + 1, at.steps_done + 1
            if finite:
                at.loss = loss_value
                rate = at.seen / (at.stepping + time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_value:.4f}", sent_s=f"{rate:.0f}")
                run.log("step", member=label.strip(": ") or None, epoch=epoch, step=step + 1,
                        loss=round(loss_value, 5), lr=scheduler.get_last_lr()[0])
            else:
                _non_finite(run, settings, label, at, loss_value, checkpoints)
            if settings.checkpoint_every and at.steps_done % settings.checkpoint_every == 0 and step + 1 < len(loader):
                at.stepping += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                checkpoint()
        at.stepping += time.perf_counter() - epoch_start
        model.eval()  # dev scores select the epoch: no dropout while scoring
        dev = evaluate_dev(accelerator.unwrap_model(model))
        score = dev[run.task.primary_metric]
        loss_value = at.loss
        run.log("epoch", member=label.strip(": ") or None, epoch=epoch,
                **{k: v for k, v in dev.items() if k != "report"})
        if accelerator.is_main_process:
            from fmkit.console import info

            info(f"{label}epoch {epoch}/{settings.epochs}: loss {loss_value:.4f}, dev {run.task.primary_metric} {score:.4f}"
                 + (" *" if score > at.best_score else ""))
        if score > at.best_score:
            at.best_score, at.best_epoch, at.best_dev, at.stale = score, epoch, dev, 0
            best_state = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
        else:
            at.stale += 1
            at.stopped = bool(settings.patience and at.stale >= settings.patience)
        at.epoch, at.step = epoch + 1, 0
        checkpoint()
        if at.stopped:
            break
    accelerator.free_memory()  # drop Accelerate's references to this member's optimizer and loader
    if best_state is not None:
        with torch.no_grad():
            for n, p in unwrapped.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    seconds = time.perf_counter() - started
    unwrapped.eval()
    return TrainReport(epoch - start_after, at.best_epoch, at.best_score, at.best_dev, seconds,
                       at.seen / at.stepping if at.stepping else 0.0)


def _all_finite(accelerator: Any, loss: float, grad_norm: Any) -> bool:
    """Whether this step's loss and gradients are finite, decided alike by every process. Under fp16
    the grad scaler skips overflowing steps itself: only the loss counts then."""
    scaled = getattr(accelerator, "scaler", None) is not None
    finite = math.isfinite(loss) and (grad_norm is None or scaled or math.isfinite(float(grad_norm)))
    if accelerator.num_processes > 1:  # each process must then skip or stop alike
        import torch

        bad = accelerator.reduce(torch.tensor([0.0 if finite else 1.0], device=accelerator.device), reduction="sum")
        finite = float(bad) == 0.0
    return finite


def _non_finite(run: Run, settings: TrainConfig, label: str, at: Position, loss: float,
                checkpoints: MemberCheckpoints | None) -> None:
    """A non-finite loss or gradient: the batch was not applied. Skip it when the user asked for that;
    otherwise stop, naming the step and the last good checkpoint (never saving NaN weights)."""
    what = f"loss became {loss}" if not math.isfinite(loss) else "gradient became non-finite"
    if settings.on_nan == "skip":
        at.skipped += 1
        run.log("skipped", member=label.strip(": ") or None, epoch=at.epoch, step=at.step, reason=what)
        return
    from fmkit.errors import FmkitError

    last = checkpoints.describe() if checkpoints is not None else "none"
    raise FmkitError(f"{label}{what} at epoch {at.epoch} step {at.step} (last good checkpoint: {last}); "
                     "lower train.lr, check the data, or set train.on_nan=skip to skip such batches")
