"""Model soups (Wortsman et al. 2022): members fine-tuned from the same start, then their weights
averaged into one model, uniformly or greedily (members by dev score, best first, each kept only if
the soup's dev score does not drop). The score is the gold labels' dev log-likelihood by default: F1 on
a small dev split moves in coarse, noisy steps (the two compared in docs/ensembles.md).

Averaging helps only members that lie in one basin of the loss, where the straight line between them
stays low. Fine-tuned from one initialisation for a short schedule they need not (measured: a uniform
soup of three 2-epoch LoRA members 2.1 F1 below its mean member), so by default they first train
together: a trunk runs the first ``soup.trunk`` of the run's schedule, then each member forks from it
with its own seed (data order, dropout) and runs the rest of that schedule.
Frankle et al. (2020) found that children forked after a little shared training end up linearly
connected. The trunk's cost is one member's share of the shared epochs, not one per member.

Adapter members are averaged as the weights they compute with
(adapter merged into the backbone, their own task heads included), which PEFT's
``add_weighted_adapter`` cannot do: it refuses task heads (``modules_to_save``). The soup is a plain
transformers model: one model's inference cost, saved in ``model/soup``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from pydantic import Field

from fmkit.plugin import (FitCallback, Member, Run, gold_labels, labels_from_probs, scores,
                          softmax_predictor)
from fmkit_combine.members import Combine, Members, VariedOptions, trunk_option

SOUP_DIR = "soup"


def average(states: Iterable[dict], coefficients: Sequence[float]) -> dict:
    """The coefficient-weighted sum of state dicts (integer buffers are taken from the first)."""
    total: dict = {}
    for state, c in zip(states, coefficients):
        for key, value in state.items():
            if not value.is_floating_point():
                total.setdefault(key, value.clone())
            elif key in total:
                total[key] += c * value.float()
            else:
                total[key] = c * value.float()
    return total


def make_soup(run: Run, models: Sequence[Any], coefficients: Sequence[float]) -> Any:
    """One plain task model whose weights are the coefficient-weighted average of the members' (each as
    the adapt stage merges it: ``fmkit_adapt_merge``, e.g. an adapter folded into its backbone)."""

    def plain(model: Any) -> Any:
        return run.hook.fmkit_adapt_merge(run=run, model=model)

    chosen = [(m, c) for m, c in zip(models, coefficients) if c]
    first = plain(chosen[0][0])
    soup = copy.deepcopy(first) if first is chosen[0][0] else first  # never average into a member itself
    soup.load_state_dict(average((plain(m).state_dict() for m, _ in chosen), [c for _, c in chosen]))
    return soup.eval()


def greedy(order: Sequence[int], score: Callable[[list[int]], float]) -> list[int]:
    """Wortsman et al.'s greedy soup: ``order`` is best member first; each next one joins when the
    soup's score with it is at least the score without it."""
    chosen, best = [order[0]], score([order[0]])
    for i in order[1:]:
        trial = score(chosen + [i])
        if trial >= best:
            chosen, best = chosen + [i], trial
    return chosen


class SoupModel:
    """The members (saved, scored) and the one averaged model that predicts."""

    standalone = SOUP_DIR  # the averaged model, a plain one: what fmkit export and the model card load

    def __init__(self, run: Run, members: list[Member], coefficients: Sequence[float], mode: str,
                 trunk: dict[str, Any] | None = None):
        self.members = members
        self.coefficients = list(coefficients)
        self.mode = mode
        self.trunk = trunk  # the shared first epochs the members forked from: epochs, train_seconds, dev
        self.model = make_soup(run, [m.model for m in members], self.coefficients)
        self._predict = softmax_predictor(self.model)

    def predict_proba(self, batch: dict) -> Any:
        return self._predict(batch)

    def attackable(self) -> Any:
        """The soup is one model: robust evaluation attacks it, as it is deployed."""
        return self.model

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "weights": self.coefficients, "model": SOUP_DIR, "trunk": self.trunk}

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(Path(directory) / SOUP_DIR)


def uniform(chosen: Sequence[int], count: int) -> list[float]:
    return [1.0 / len(chosen) if i in chosen else 0.0 for i in range(count)]


def log_likelihood(task: Any, gold: list, probs: list) -> float:
    """Mean log-probability of the gold labels, per word for NER (gold labels the model lacks are
    skipped): a proper score that moves with every prediction, where F1 on a small split moves in steps."""
    import numpy as np

    index = {label: i for i, label in enumerate(task.labels)}
    pairs = [(p[w], index[g]) for p, tags in zip(probs, gold) for w, g in enumerate(tags) if g in index] \
        if task.kind == "ner" else [(p, index[g]) for p, g in zip(probs, gold) if g in index]
    return float(np.mean([np.log(max(float(row[i]), 1e-12)) for row, i in pairs]))


def choose(run: Run, members: Sequence[Member], dev_probabilities: Callable[[Any], list], by: str) -> list[int]:
    """The greedy soup's members: ranked by their own dev score, each added when the soup's dev score
    does not drop. ``by``: "metric" (the task's primary metric) or "loss" (the gold labels' log-likelihood)."""
    task, metric = run.task, run.task.primary_metric
    gold = gold_labels(task, run.data.dev)
    name = metric if by == "metric" else "log-likelihood"

    def dev_score(chosen: list[int]) -> float:
        soup = make_soup(run, [members[i].model for i in chosen], [1.0 / len(chosen)] * len(chosen))
        probs = dev_probabilities(softmax_predictor(soup))
        result = scores(task, gold, labels_from_probs(task, probs))[metric] if by == "metric" \
            else log_likelihood(task, gold, probs)
        run.say(f"soup: {'+'.join(members[i].name for i in chosen)} dev {name} {result:.4f}")
        return result

    alone = {i: dev_score([i]) for i in range(len(members))}
    chosen = greedy(sorted(alone, key=lambda i: -alone[i]), lambda c: alone[c[0]] if len(c) == 1 else dev_score(c))
    if len(chosen) == 1:
        run.say(f"soup: greedy kept {members[chosen[0]].name} alone (every other member lowered dev {name}): "
                "the result is that one member" + ("; on a small dev split try soup.greedy_by=loss "
                                                   "(docs/ensembles.md)" if by == "metric" else ""))
    return chosen


def train_soup(run: Run, fit: FitCallback, plugin: Combine) -> SoupModel:
    """The trunk (when ``soup.trunk`` leaves one), the members forked from it, and their soup."""
    trainer = Members(run, fit, plugin)
    members = trainer.train(plugin.specs(run))
    trunk = trainer.record().get("trunk")
    if plugin.options.mode == "uniform":
        return SoupModel(run, members, uniform(range(len(members)), len(members)), "uniform", trunk)
    chosen = choose(run, members, lambda predict: fit.probabilities(predict, "dev"), plugin.options.greedy_by)
    return SoupModel(run, members, uniform(chosen, len(members)), "greedy", trunk)


class Soup(Combine):
    """Model soup: members trained from the same start, weights averaged (uniform or greedy) into one model."""

    name = "soup"
    same_start = True
    combination = "their weights averaged into one model (greedy or uniform soup)"
    requires = frozenset({"merge"})  # it averages the members' weights

    class Options(VariedOptions):
        mode: Literal["uniform", "greedy"] = Field("greedy", description="greedy (Wortsman et al.'s recommendation): "
                                                   "add members best dev score first, keep each that does not lower "
                                                   "it; uniform: average every member")
        greedy_by: Literal["loss", "metric"] = Field("loss", description="what the greedy soup compares on dev: "
                                                     "loss, the gold labels' log-likelihood, which moves with every "
                                                     "prediction where F1 on a small dev split moves in steps (chosen "
                                                     "on CoNLL held-out data, docs/ensembles.md); metric, the task's "
                                                     "primary metric (NER: entity F1), as Wortsman et al.")
        members: int = Field(4, ge=2, description="ensemble members; each continues the trunk on all the rows, "
                                                  "so the cost grows with it")
        trunk: float = trunk_option(0.7)  # forked from one trunk, members stay in one basin and average well

    def combine(self, run: Run, fit: FitCallback) -> SoupModel:
        return train_soup(run, fit, self)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> SoupModel:
        return SoupModel(run, members, state["weights"], state["mode"], state.get("trunk"))
