"""``pgd``: several projected ascent steps, then train at the point they reach."""

from __future__ import annotations

from pydantic import Field

from fmkit_harden.attack import AttackSettings, HardenPlugin, StepsOptions


class PGDOptions(StepsOptions):
    steps: int = Field(2, ge=1, description="ascent steps per training batch (2: a fifth cheaper than 3, which "
                       "keeps the 5-member pgd+bagging headline under 15 CPU minutes; docs/ensembles.md)")


class PGD(HardenPlugin):
    """PGD: several projected ascent steps, then train on the point they reach.

    Madry et al. 2018: ``steps`` ascents of 2.5*epsilon/steps. The first ascent reuses the clean
    pass's backward; the others compute input gradients only (no parameter gradients)."""

    name = "pgd"
    Options = PGDOptions

    def pass_weights(self, settings: AttackSettings) -> list[float]:
        """``steps`` passes that only move the perturbation, then the point they reach trains."""
        return [0.0] * settings.steps + [settings.adv_weight]
