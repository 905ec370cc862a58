"""Model soups (Wortsman et al. 2022): members fine-tuned from the same start, then their weights
averaged into one model, uniformly or greedily (members by dev score, best first, each kept only if
the soup's dev score does not drop). Adapter members are averaged as the weights they compute with
(adapter merged into the backbone, their own task heads included), which PEFT's
``add_weighted_adapter`` cannot do: it refuses task heads (``modules_to_save``). The soup is a plain
transformers model: one model's inference cost, saved in ``model/soup``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fmkit.evaluate import gold_labels, labels_from_probs, scores, softmax_predictor
from fmkit.types import Member, Run
from fmkit_ensemble.base import Combine, Fit, Members

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


def make_soup(models: Sequence[Any], coefficients: Sequence[float]) -> Any:
    """One plain task model whose weights are the coefficient-weighted average of the members'."""
    from fmkit_ensemble.shared import plain_model, weights_of

    chosen = [(m, c) for m, c in zip(models, coefficients) if c]
    soup = plain_model(chosen[0][0])
    soup.load_state_dict(average((weights_of(m) for m, _ in chosen), [c for _, c in chosen]))
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

    def __init__(self, members: list[Member], coefficients: Sequence[float], mode: str):
        self.members = members
        self.coefficients = list(coefficients)
        self.mode = mode
        self.model = make_soup([m.model for m in members], self.coefficients)
        self._predict = softmax_predictor(self.model)

    def predict_proba(self, batch: dict) -> Any:
        return self._predict(batch)

    def attackable(self) -> Any:
        """The soup is one model: robust evaluation attacks it, as it is deployed."""
        return self.model

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "weights": self.coefficients, "model": SOUP_DIR}

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(Path(directory) / SOUP_DIR)


def uniform(chosen: Sequence[int], count: int) -> list[float]:
    return [1.0 / len(chosen) if i in chosen else 0.0 for i in range(count)]


def cook(run: Run, fit: Fit, plugin: Combine) -> SoupModel:
    members = Members(run, fit, plugin).train(plugin.specs(run))
    if plugin.options.mode == "uniform":
        return SoupModel(members, uniform(range(len(members)), len(members)), "uniform")
    metric = run.task.primary_metric
    gold = gold_labels(run.task, run.data.dev)

    def dev_score(chosen: list[int]) -> float:
        soup = make_soup([members[i].model for i in chosen], [1.0 / len(chosen)] * len(chosen))
        predicted = labels_from_probs(run.task, fit.probabilities(softmax_predictor(soup), "dev"))
        result = scores(run.task, gold, predicted)[metric]
        run.say(f"soup: {'+'.join(members[i].name for i in chosen)} dev {metric} {result:.4f}")
        return result

    order = sorted(range(len(members)), key=lambda i: -members[i].dev_metrics.get(metric, 0.0))
    chosen = greedy(order, dev_score)
    return SoupModel(members, uniform(chosen, len(members)), "greedy")
