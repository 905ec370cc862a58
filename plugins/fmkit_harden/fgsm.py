"""``fgsm``: one ascent step to the edge of the ball, then train at the point it reaches."""

from __future__ import annotations

from fmkit_harden.attack import AttackOptions, AttackSettings, HardenPlugin


class FGSM(HardenPlugin):
    """FGSM: one gradient step to the edge of the ball, on input embeddings or pixels.

    Goodfellow et al. 2015; Miyato et al. 2017 for embeddings. Two passes per batch: the clean
    pass's backward gives the direction. With random_init it is "fast" adversarial training
    (Wong et al. 2020; step 1.25*epsilon)."""

    name = "fgsm"
    Options = AttackOptions

    def default_step_size(self, epsilon: float) -> float:
        return (1.25 if self.options.random_init else 1.0) * epsilon

    def pass_weights(self, settings: AttackSettings) -> list[float]:
        """The start only gives the direction; the point one step away trains the parameters."""
        return [0.0, settings.adv_weight]
