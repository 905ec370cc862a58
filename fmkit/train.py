"""The one training loop (HF Accelerate): AdamW with linear warm-up/decay, gradient clipping,
length-bucketed batches, best-epoch selection on dev, and the harden stage plugged into each step.

Seeded and deterministic on CPU. ``accelerate launch -m fmkit run ...`` makes it data-parallel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fmkit.checkpoint import MemberCheckpoints, Position, rng_state, set_rng_state
from fmkit.config import TrainConfig
from fmkit.data.batching import BucketBatchSampler, Collator, IndexedFeatures
from fmkit.data.encode import IGNORE
from fmkit.evaluate import model_inputs
from fmkit.types import Hardener, Run, StopTraining


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
    """The model's logits on a batch (only the keys a task model takes are passed)."""
    return model(**model_inputs(batch)).logits


_ACCELERATOR: dict[str, Any] = {}  # the process's Accelerator, by its precision


def bf16_in_hardware() -> bool:
    """Whether bf16 matrix products run in hardware here: a CUDA GPU that has them, or a CPU with AVX-512 BF16
    or AMX (the flags Linux lists in /proc/cpuinfo). Elsewhere bf16 autocast is emulated, and slower."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolved_precision(precision: str) -> str:
    """``train.precision`` as Accelerate takes it: ``auto`` is bf16 where ``bf16_in_hardware``, else no."""
    if precision == "auto":
        return "bf16" if bf16_in_hardware() else "no"
    return precision


def accelerator_for(precision: str) -> Any:
    """The process's Accelerator, at ``precision`` (``auto`` resolved). Accelerate keeps one global state, whose
    mixed precision cannot change: a run at another precision than the last one in this process
    (``fmkit.run`` twice, a sweep's cells) resets that state and makes a new one (the devices and processes
    stay as they were)."""
    precision = resolved_precision(precision)
    if precision not in _ACCELERATOR:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        if _ACCELERATOR:
            AcceleratorState._reset_state()
            _ACCELERATOR.clear()
        _ACCELERATOR[precision] = Accelerator(mixed_precision=precision, cpu=_launched_without_gpus())
    return _ACCELERATOR[precision]


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


class Trainer:
    """Trains ``model`` in place on ``data`` and keeps the weights of the epoch with the best dev score:
    ``Trainer(...).fit()``. ``__init__`` sets up (and resumes from a checkpoint), ``fit`` runs the epochs,
    each a series of ``step`` calls closed by ``end_epoch``.

    With ``checkpoints``, training continues from the last one and writes one at each epoch end (and every
    ``train.checkpoint_every`` steps). ``stop_after``: run only that many epochs of the schedule of
    ``settings.epochs`` (its warm-up and part of its decay), e.g. a trunk that members continue;
    ``start_after``: skip that many, for a model that was trained through them (such a member)."""

    def __init__(
        self,
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
    ) -> None:
        from accelerate.utils import set_seed

        self.run, self.model, self.evaluate_dev, self.settings = run, model, evaluate_dev, settings
        self.label, self.member = label, label.strip(": ") or None  # console prefix; the log's member field
        self.hardeners, self.checkpoints = hardeners, checkpoints
        self.stop_after, self.start_after = stop_after, start_after
        set_seed(seed)
        self.accelerator = accelerator_for(settings.precision)
        self.trainable = [p for _, p in model.named_parameters() if p.requires_grad]
        if self.trainable:  # else ``fit`` only scores the model
            self._prepare(data, seed, pad_id, weights)
            self._resume()

    def _prepare(self, data: IndexedFeatures, seed: int, pad_id: int, weights: Sequence[float] | None) -> None:
        """AdamW (no decay on biases and norms), length-bucketed batches and a linear schedule that a
        model trained through ``start_after`` epochs joins where it left off; then Accelerate's wrapping."""
        import torch
        from torch.utils.data import DataLoader
        from transformers import get_linear_schedule_with_warmup

        settings, accelerator = self.settings, self.accelerator
        # The fused kernel updates every tensor in one pass: on CPU the per-tensor default spends ~7x
        # longer per step on a MiniLM (a quarter of a training step); the Trainer uses it too.
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in self.trainable)
        optimizer = torch.optim.AdamW(parameter_groups(self.model, self.trainable, settings), lr=settings.lr,
                                      fused=fused or None)
        self.sampler = BucketBatchSampler(data.lengths, settings.batch_size, shuffle=True, seed=seed)
        loader = DataLoader(data, batch_sampler=self.sampler, collate_fn=Collator(pad_id, weights))
        total_steps = len(self.sampler) * settings.epochs
        for group in optimizer.param_groups:  # what a scheduler started past step 0 (start_after) reads its peak from
            group.setdefault("initial_lr", group["lr"])
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * total_steps),
                                                    total_steps, last_epoch=len(self.sampler) * self.start_after - 1)
        self.model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(
            self.model, optimizer, loader, scheduler)
        self.backward_share = 1.0 / max(len(self.hardeners), 1)  # each hardener's part of a step's gradient
        self.unwrapped = accelerator.unwrap_model(self.model)

    def _resume(self) -> None:
        """Continue from the last checkpoint, if any. Its RNG states are restored at once at an epoch
        boundary; mid-epoch only at the first batch after the skipped ones (``self.rng``), once the
        interrupted epoch's loader has drawn its seed, as it had then."""
        self.position, self.best_state, self.rng = Position(epoch=self.start_after + 1), None, None
        checkpoints = self.checkpoints
        restored = None if checkpoints is None else checkpoints.load(
            self.unwrapped, self.optimizer, self.scheduler, self.accelerator.process_index)
        if restored is not None:
            self.position, self.best_state, self.rng = restored
            self.run.log("resume", member=self.member, epoch=self.position.epoch, step=self.position.step)
            if self.position.step == 0:
                set_rng_state(self.rng)
                self.rng = None
        self.start = Position(self.position.epoch, self.position.step)  # batches done before an interruption

    def fit(self) -> TrainReport:
        """Run the remaining epochs (of ``stop_after``, or all), stopping early when patience runs out or an
        ``fmkit_event`` listener raises StopTraining; leave the best epoch's weights in the model, in eval mode.
        Tells the listeners ``train_begin`` and ``train_end``."""
        first = self.position.epoch if self.trainable else 0  # nothing to train: epoch and step 0
        self.run.emit("train_begin", member=self.member, epoch=first, step=self.global_step())
        report = self._train() if self.trainable else self._score_untrained()
        last = self.start_after + report.epochs_run if self.trainable else 0
        self.run.emit("train_end", {"best_epoch": report.best_epoch, "epochs_run": report.epochs_run,
                                    "dev": report.best_dev}, member=self.member, epoch=last, step=self.global_step())
        return report

    def global_step(self) -> int:
        """Optimizer steps of the member's schedule so far (those of the ``start_after`` epochs included)."""
        return self.start_after * len(self.loader) + self.position.steps_done if self.trainable else 0

    def _train(self) -> TrainReport:
        position = self.position
        started = time.perf_counter()  # position.stepping: time in training steps only
        epoch = position.epoch - 1  # what ``epochs_run`` counts from when no epoch is left to run
        for epoch in range(position.epoch, (self.stop_after or self.settings.epochs) + 1):
            if position.stopped:
                break
            self.train_epoch(epoch)
            self.end_epoch(epoch)
            if position.stopped:
                break
        self.restore_best()
        seconds = time.perf_counter() - started
        self.unwrapped.eval()
        return TrainReport(epoch - self.start_after, position.best_epoch, position.best_score, position.best_dev,
                           seconds, position.seen / position.stepping if position.stepping else 0.0)

    def _score_untrained(self) -> TrainReport:
        """Nothing left to train (e.g. a head fitted in closed form): score the model once."""
        self.model.to(self.accelerator.device).eval()
        dev = self.evaluate_dev(self.model)
        return TrainReport(0, 0, dev[self.run.task.primary_metric], dev, 0.0, 0.0)

    def train_epoch(self, epoch: int) -> None:
        """The batches of ``epoch``, less those done before an interruption; ``self.clock`` marks when
        the current stretch of training steps began (checkpoint writing does not count)."""
        from tqdm.auto import tqdm

        settings, accelerator, loader = self.settings, self.accelerator, self.loader
        self.sampler.set_epoch(epoch)
        loader.set_epoch(epoch)  # the prepared loader re-seeds the sampler with its own epoch count otherwise
        skip = self.start.step if epoch == self.start.epoch else 0
        self.model.train()
        shown = settings.progress and accelerator.is_main_process
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        self.bar = tqdm(batches,
                        desc=f"{self.label}epoch {epoch}/{settings.epochs}", leave=False, initial=skip,
                        total=len(loader), disable=True if not shown else None,  # None: off without a TTY
                        dynamic_ncols=True)
        self.clock = time.perf_counter()
        for index, batch in enumerate(self.bar, start=skip):
            if self.rng is not None:  # resumed mid-epoch: the RNG states as they were after this many batches
                set_rng_state(self.rng)
                self.rng = None
            self.step(epoch, index, batch)
            if self.position.stopped:  # a listener raised StopTraining: end_epoch scores what was trained
                batches.end()  # what the loader does at its last batch, which this break skips
                break
        self.position.stepping += time.perf_counter() - self.clock

    def step(self, epoch: int, index: int, batch: dict) -> None:
        """Batch ``index`` (from 0) of ``epoch``: gradients through the hardeners or the clean loss,
        clipped, applied only when finite (else ``_non_finite`` skips or stops); a log line; and a
        checkpoint every ``train.checkpoint_every`` steps, except after an epoch's last batch."""
        accelerator, optimizer, scheduler, position = self.accelerator, self.optimizer, self.scheduler, self.position
        if self.hardeners:
            loss = sum(h.train_step(self.model, batch, self._backward) for h in self.hardeners) * self.backward_share
        else:
            loss = task_loss(forward_logits(self.model, batch), batch)
            accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        loss_value = float(loss.detach())
        finite = _all_finite(accelerator, loss_value, norm)
        if finite:
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        position.seen += len(batch["input_ids"])
        position.epoch, position.step, position.steps_done = epoch, index + 1, position.steps_done + 1
        if finite:
            position.loss = loss_value
            rate = position.seen / (position.stepping + time.perf_counter() - self.clock)
            self.bar.set_postfix(loss=f"{loss_value:.4f}", sent_s=f"{rate:.0f}")
            self.run.log("step", member=self.member, epoch=epoch, step=index + 1, loss=round(loss_value, 5),
                         lr=scheduler.get_last_lr()[0])
            position.stopped = self._stop_asked("step", epoch, {"loss": loss_value, "lr": scheduler.get_last_lr()[0]})
        else:
            _non_finite(self.run, self.settings, self.label, position, loss_value, self.checkpoints)
        every = self.settings.checkpoint_every
        if every and position.steps_done % every == 0 and index + 1 < len(self.loader):
            position.stepping += time.perf_counter() - self.clock
            self.clock = time.perf_counter()
            self.save_checkpoint()

    def _stop_asked(self, name: str, epoch: int, values: dict[str, Any]) -> bool:
        """Emit event ``name``; whether a listener raised StopTraining, on any process (all then stop alike)."""
        try:
            self.run.emit(name, values, member=self.member, epoch=epoch, step=self.global_step())
            stop = False
        except StopTraining:
            stop = True
        if self.accelerator.num_processes > 1:  # like _all_finite: one tiny reduce per step
            import torch

            asked = self.accelerator.reduce(torch.tensor([float(stop)], device=self.accelerator.device), reduction="sum")
            stop = float(asked) > 0
        return stop

    def _backward(self, loss: Any) -> None:
        """What hardeners call for each of their losses: its share of the step's gradient."""
        self.accelerator.backward(loss * self.backward_share)

    def end_epoch(self, epoch: int) -> None:
        """Score ``epoch`` on dev (no dropout: the scores select the epoch), log and show it, keep the
        weights of the best epoch so far, count patience, and checkpoint the state after it."""
        position, primary = self.position, self.run.task.primary_metric
        self.model.eval()
        dev = self.evaluate_dev(self.accelerator.unwrap_model(self.model))
        score = dev[primary]
        self.run.log("epoch", member=self.member, epoch=epoch, **{k: v for k, v in dev.items() if k != "report"})
        if self.accelerator.is_main_process:
            from fmkit.console import info

            info(f"{self.label}epoch {epoch}/{self.settings.epochs}: loss {position.loss:.4f}, "
                 f"dev {primary} {score:.4f}" + (" *" if score > position.best_score else ""))
        if score > position.best_score:
            position.best_score, position.best_epoch, position.best_dev, position.stale = score, epoch, dev, 0
            self.best_state = {n: t.detach().clone() for n, t in self._kept()}
        else:
            position.stale += 1
            position.stopped = position.stopped or bool(self.settings.patience and position.stale >= self.settings.patience)
        position.stopped = self._stop_asked("epoch_end", epoch, {"loss": position.loss, "dev": dev}) or position.stopped
        position.epoch, position.step = epoch + 1, 0
        self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """The state after ``self.position``, with every process's RNG states (a no-op without checkpoints)."""
        if self.checkpoints is None:
            return
        states = [rng_state()]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        self.checkpoints.save(self.unwrapped, self.optimizer, self.scheduler, self.position, self.best_state, states)

    def restore_best(self) -> None:
        """Put the best epoch's weights back, after dropping Accelerate's references to this member's
        optimizer and loader (their memory goes before the next member's is taken)."""
        import torch

        self.accelerator.free_memory()
        if self.best_state is None:
            return
        with torch.no_grad():
            for n, t in self._kept():
                if n in self.best_state:
                    t.copy_(self.best_state[n])

    def _kept(self) -> list[tuple[str, Any]]:
        """What the best epoch keeps: the trained parameters and floating-point buffers (the running
        statistics of a batch norm, which belong to the weights they were gathered with)."""
        parameters = [(n, p) for n, p in self.unwrapped.named_parameters() if p.requires_grad]
        return parameters + [(n, b) for n, b in self.unwrapped.named_buffers() if b.is_floating_point()]


def parameter_groups(model: Any, trainable: list, settings: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: no weight decay on biases and norms (tensors of one dimension), and
    ``train.new_lr`` for the parameters of modules the builder marked new (``fmkit.model.mark_new``),
    ``train.lr`` for the rest. Groups of equal settings are one group, so without ``new_lr`` the
    optimizer is exactly the one-rate optimizer."""
    from fmkit.model import new_parameters

    new = new_parameters(model) if settings.new_lr is not None else set()
    groups: dict[tuple[float, float], list] = {}
    for decays in (True, False):
        for fresh in (False, True):
            rate = settings.new_lr if fresh else settings.lr
            chosen = [p for p in trainable if (p.ndim >= 2) == decays and (id(p) in new) == fresh]
            if chosen:
                groups.setdefault((rate, settings.weight_decay if decays else 0.0), []).extend(chosen)
    return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]


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
