"""Ensembles, combine stage: ``bagging``, ``boosting``, ``stacking``, ``voting`` and ``soup``.

Members are trained through the core's ``fit``; with an adapter plugin they are named adapters on
one shared frozen backbone (``shared.py``), with ``full`` separate models. Each module imports
torch, PEFT and scikit-learn only inside functions, so listing plugins stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fmkit.errors import FmkitError
from fmkit.types import Member, MemberSpec, Run
from fmkit_ensemble.base import Combine, CombineOptions, Fit, VariedOptions

VOTE = Field("soft", description="soft: average the members' probabilities; hard: each member votes for its most "
                                 "likely class (per token for ner)")


class Bagging(Combine):
    """Bagging (Breiman 1996): each member trains on its own bootstrap sample; soft vote, per token for NER."""

    name = "bagging"

    class Options(CombineOptions):
        sample: float = Field(0.3, gt=0, le=1, description="size of each bootstrap sample (drawn with replacement) "
                                                           "as a share of the training set: 0.3 keeps `fmkit run "
                                                           "--plugins adapter,pgd,bagging` under 15 minutes on 2 CPU "
                                                           "cores; 1.0 (Breiman's) gives stronger members at 3.3x the "
                                                           "cost (docs/ensembles.md)")
        vote: Literal["soft", "hard"] = VOTE

    def specs(self, run: Run) -> list[MemberSpec]:
        """Seeded bootstrap samples, recorded as each member's indices (model/ensemble.json)."""
        import numpy as np

        n = len(run.data.train)
        size = max(1, round(self.options.sample * n))
        specs = super().specs(run)
        for i, spec in enumerate(specs):
            spec.indices = np.random.default_rng([run.seed, i]).integers(0, n, size).tolist()
        return specs

    def note(self, spec: MemberSpec) -> str:
        return f", bootstrap sample of {len(spec.indices):,} rows, {len(set(spec.indices)):,} distinct"


class Voting(Combine):
    """Voting: members that differ by seed, or by any train.* option lists given; soft or hard vote."""

    name = "voting"

    class Options(VariedOptions):
        vote: Literal["soft", "hard"] = VOTE


class Boosting(Combine):
    """SAMME boosting with scikit-learn's AdaBoost arithmetic: weighted rows in the loss, members weighted by their error."""

    name = "boosting"
    Options = CombineOptions

    def combine(self, run: Run, fit: Fit) -> Any:
        from fmkit_ensemble.boosting import boost

        return boost(run, fit, self)


class Stacking(Combine):
    """Stacking on K folds: a LogisticRegression meta-learner fitted on out-of-fold predictions only."""

    name = "stacking"

    class Options(CombineOptions):
        members: int = Field(5, ge=2, description="members, one per fold: member i trains on every fold but fold i")
        C: float = Field(1.0, gt=0, description="inverse regularisation strength of the LogisticRegression meta-learner")

    def combine(self, run: Run, fit: Fit) -> Any:
        from fmkit_ensemble.stacking import stack

        return stack(run, fit, self)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        from fmkit_ensemble.stacking import restore

        return restore(members, state, directory)


class Soup(Combine):
    """Model soup: members trained from the same start, weights averaged (uniform or greedy) into one model."""

    name = "soup"
    same_start = True

    class Options(VariedOptions):
        mode: Literal["uniform", "greedy"] = Field("greedy", description="greedy (Wortsman et al.'s recommendation): "
                                                   "add members best dev score first, keep each that does not lower "
                                                   "it; uniform: average every member")
        greedy_by: Literal["loss", "metric"] = Field("loss", description="what the greedy soup compares on dev: "
                                                     "loss, the gold labels' log-likelihood, which moves with every "
                                                     "prediction where F1 on a small dev split moves in steps (chosen "
                                                     "on CoNLL held-out data, docs/ensembles.md); metric, the task's "
                                                     "primary metric (NER: entity F1), as Wortsman et al.")
        shared: float = Field(0.5, ge=0, lt=1, description="share of train.epochs (rounded down to whole epochs) "
                              "the members train as one trunk before they fork, so that they stay in one basin "
                              "and average well (docs/ensembles.md); 0: each trains from the common start alone")

    def check(self, config: Any) -> None:
        super().check(config)
        method = config.plugin_options.get("adapter", {}).get("method")
        if "adapter" in config.plugins and method in ("prefix", "prompt"):
            raise FmkitError(f"soup averages weights, but adapter.method={method} trains virtual tokens that merge into "
                             "no weight; use lora, ia3, loha, lokr or adalora")

    def combine(self, run: Run, fit: Fit) -> Any:
        from fmkit_ensemble.soup import cook

        return cook(run, fit, self)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Any:
        from fmkit_ensemble.soup import SoupModel

        return SoupModel(members, state["weights"], state["mode"], state.get("trunk"))
