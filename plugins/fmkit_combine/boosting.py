"""SAMME boosting (Zhu et al. 2009) with the arithmetic of scikit-learn's ``AdaBoostClassifier``
(learning rate 1): a member's weighted error sets its vote weight, and the rows it got wrong weigh
more for the next member. For NER a row is a sentence, wrong when any of its words is, and the
outcome is binary (right or wrong), so the SAMME class count is 2 there."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fmkit.plugin import FitCallback, FmkitError, MemberSpec, Run, gold_labels, labels_from_probs, softmax_predictor
from fmkit_combine.members import Combine, Members, TrunkOptions, trunk_option
from fmkit_combine.vote import CASCADE_OPTION, Vote


def samme_round(sample_weight: np.ndarray, incorrect: np.ndarray, n_classes: int) -> tuple[np.ndarray | None, float, float]:
    """(next sample weights, normalised; member weight; weighted error) after one member, as
    scikit-learn's ``AdaBoostClassifier._boost`` computes them. Next weights are None when the member
    is no better than chance (it is then dropped); a member without errors gets weight 1 and ends boosting."""
    error = float(np.average(incorrect, weights=sample_weight))
    if error <= 0:
        return sample_weight, 1.0, 0.0
    if error >= 1.0 - 1.0 / n_classes:
        return None, 0.0, error
    alpha = float(np.log((1.0 - error) / error) + np.log(n_classes - 1.0))
    updated = np.exp(np.log(sample_weight) + alpha * incorrect * (sample_weight > 0))
    return updated / updated.sum(), alpha, error


def boost(run: Run, fit: FitCallback, plugin: Combine) -> Vote:
    """Train members one after another on reweighted rows; combine them by a vote weighted by SAMME."""
    task, n = run.task, len(run.data.train)
    n_classes = 2 if task.kind == "ner" else len(task.labels)
    gold = gold_labels(task, run.data.train)
    trainer = Members(run, fit, plugin)
    specs = plugin.specs(run)
    trainer.announce(len(specs))
    trainer.grow_trunk(specs)
    weights = np.full(n, 1.0 / n)
    members, alphas, errors, stopped = [], [], [], None
    for i, spec in enumerate(specs):
        weights = np.clip(weights, np.finfo(float).eps, None)  # as scikit-learn: no weight reaches zero
        spec.weights = (weights * n).tolist()  # mean 1, so the loss keeps its scale
        member = trainer.train_one(spec, i, len(specs), f", rows weighted {weights.min() * n:.2f} to {weights.max() * n:.2f}")
        predicted = labels_from_probs(task, fit.probabilities(softmax_predictor(member.model), "train"))
        incorrect = np.array([p != g for p, g in zip(predicted, gold)], dtype=float)
        updated, alpha, error = samme_round(weights, incorrect, n_classes)
        run.log("boosting", member=spec.name, weighted_error=error, weight=alpha, wrong_rows=int(incorrect.sum()))
        run.say(f"boosting: {spec.name} weighted training error {error:.4f}, member weight {alpha:.4f}")
        if updated is None:
            if not members:
                raise FmkitError(f"boosting: the first member's weighted training error {error:.4f} is no better than "
                                 f"chance (1 - 1/{n_classes}); train it longer (train.epochs) or use bagging")
            stopped = f"{spec.name} was no better than chance (weighted error {error:.4f}) and was dropped"
            break
        members.append(member)
        alphas.append(alpha)
        errors.append(error)
        if error == 0:
            stopped = f"{spec.name} made no training error"
            break
        weights = updated
    if stopped:
        run.say(f"boosting: stopped after {len(members)} members: {stopped}")
    return Vote(members, alphas, "soft", {"member_weights": alphas, "weighted_errors": errors, "stopped": stopped,
                                          **trainer.record()}, plugin.options.cascade)


class Boosting(Combine):
    """SAMME boosting with scikit-learn's AdaBoost arithmetic: weighted rows in the loss, members weighted by their error."""

    name = "boosting"
    combination = "a vote weighted by each member's SAMME weight (boosting may stop early)"

    class Options(TrunkOptions):
        members: int = Field(3, ge=2, description="ensemble members at most (boosting stops early when a member "
                                                  "makes no error or none better than chance)")
        trunk: float = trunk_option(0.7)
        cascade: float | None = CASCADE_OPTION

    def note(self, spec: MemberSpec) -> str:
        return ", all rows, reweighted by the errors of the members before it"

    def combine(self, run: Run, fit: FitCallback) -> Vote:
        return boost(run, fit, self)
