"""``freelb``: train on every point of the ascent (text only)."""

from __future__ import annotations

from typing import NoReturn

from fmkit.plugin import FmkitError
from fmkit_harden.attack import AttackSettings, HardenPlugin, StepsOptions


class FreeLB(HardenPlugin):
    """FreeLB: train on every point of the ascent, each backward doing double duty.

    Zhu et al. 2020: ``steps`` passes; each backward both moves the perturbation and adds its share
    of the parameter gradients ("free" adversarial training, Shafahi et al. 2019, inside one
    optimizer step). Text only: torchattacks has no FreeLB for images."""

    name = "freelb"
    Options = StepsOptions

    def pass_weights(self, settings: AttackSettings) -> list[float]:
        """Each of the ``steps`` points trains with an equal share of ``adv_weight``."""
        return [settings.adv_weight / settings.steps] * settings.steps

    def pixel_attack(self, settings: AttackSettings) -> NoReturn:
        raise FmkitError(f"{settings.name}: image inputs are attacked with torchattacks, which has no "
                         "FreeLB; use fgsm or pgd for batches with pixel_values")
