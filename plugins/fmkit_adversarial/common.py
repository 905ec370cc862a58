"""What the embedding and the pixel attacks share: the resolved settings, gradients during evaluation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Recipe:
    """One harden plugin's settings, resolved (derived step sizes filled in)."""

    name: str
    epsilon: float
    step_size: float
    steps: int
    norm: str  # "l2" (per token / per image) or "linf"
    random_init: bool
    adv_weight: float
    accumulate: bool  # FreeLB: every point of the ascent trains the parameters, not only the last
    eval_steps: int
    pixel_epsilon: float

    @property
    def eval_step_size(self) -> float:
        """Madry et al.'s rule: 2.5 epsilon over the steps, so the walk can reach the boundary."""
        return 2.5 * self.epsilon / self.eval_steps


@contextlib.contextmanager
def gradients_on(batch: dict) -> Iterator[dict]:
    """Attacks need input gradients, also inside evaluation's inference mode: yield a copy of the
    batch made outside it (inference tensors cannot be saved for backward)."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}

