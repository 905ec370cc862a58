"""AdaLoRA's rank budget: PEFT must re-allocate ranks after every optimizer step, while the gradients
still exist. The core training loop knows no technique, so the step is observed through torch's
global optimizer hook, filtered to the optimizer that trains this model."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar


class RankAllocation:
    """Calls ``update_and_allocate(step)`` on an AdaLoRA PeftModel after each of its optimizer steps.

    The hook holds the model weakly; hooks of models that are gone are removed when the next one is
    registered (never from inside torch's loop over the hooks). AdaLoRA's orthogonality regulariser
    is not added: fmkit computes the loss from the logits.
    """

    live: ClassVar[list[RankAllocation]] = []

    def __init__(self, model: Any):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        for old in [a for a in RankAllocation.live if a.model() is None]:
            old.handle.remove()
            RankAllocation.live.remove(old)
        self.model = weakref.ref(model)
        self.marker = weakref.ref(next(p for p in model.parameters() if p.requires_grad))
        self.step = 0
        self.handle = register_optimizer_step_post_hook(self)
        RankAllocation.live.append(self)

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        model, marker = self.model(), self.marker()
        if model is not None and any(p is marker for group in optimizer.param_groups for p in group["params"]):
            self.step += 1
            model.base_model.update_and_allocate(self.step)
