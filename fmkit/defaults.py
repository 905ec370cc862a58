"""The core's answers for stages no selected plugin serves, registered in every run's plugin manager
after the plugins and marked ``trylast``: pluggy asks them only when no plugin answered. One place
for each fallback, whoever calls the hook (``fmkit run``, ``eval``, ``predict`` or a Ray worker)."""

from __future__ import annotations

from typing import Any, Callable

import fmkit
from fmkit.types import Foundation, Member, MemberSpec, ModelBuilder, Run


class SingleModel:
    """The combine stage's default: one member, its own probabilities."""

    def __init__(self, member: Member):
        from fmkit.evaluate import softmax_predictor

        self.members = [member]
        self._predict = softmax_predictor(member.model)

    def predict_proba(self, batch: dict) -> Any:
        return self._predict(batch)

    def state(self) -> dict[str, Any]:
        return {}


class CoreDefaults:
    """Fallbacks: a text-only task model, a model that is already plain, one member."""

    @fmkit.hookimpl(trylast=True)
    def fmkit_fuse(self, run: Run, foundation: Foundation) -> ModelBuilder:
        from fmkit.model import TextModelBuilder

        return TextModelBuilder(foundation, run.task, run.config.trust_remote_code)

    @fmkit.hookimpl(trylast=True)
    def fmkit_adapt_merge(self, run: Run, model: Any) -> Any:
        return model

    @fmkit.hookimpl(trylast=True)
    def fmkit_combine(self, run: Run, fit: Callable[[MemberSpec], Member]) -> SingleModel:
        return SingleModel(fit(MemberSpec("model", seed=run.seed)))
