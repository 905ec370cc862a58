"""Assessment: scoring predictors on the run's splits, clean metrics of the combination and of every
member, and metrics under the harden stage's attacks (robust evaluation)."""

from __future__ import annotations

from typing import Any, Sequence

from fmkit.data.encode import Feature, encode
from fmkit.evaluate import (attack_success_rate, example_probs, gold_labels, labels_from_probs, per_type_scores,
                            scores, softmax_predictor)
from fmkit.stages import attacks as attacks_of
from fmkit.types import Run, TaskData


class Scorer:
    """Scores predictors (batch -> probabilities) on examples of the run's task: each split is encoded
    once with the foundation's tokenizer, then predicted in batches on the run's device."""

    def __init__(self, run: Run):
        self.run = run
        self.features: dict[str, list[Feature]] = {}

    @property
    def pad_id(self) -> int:
        return self.run.foundation.tokenizer.pad_token_id or 0

    def encode(self, split: str, examples: Sequence) -> list[Feature]:
        if split not in self.features:
            self.features[split] = encode(self.run.task, examples, self.run.foundation.tokenizer,
                                          self.run.config.train.max_length)
        return self.features[split]

    def evaluate(self, predict: Any, examples: Sequence, split: str,
                 desc: str | None = None) -> tuple[dict[str, Any], list]:
        """Metrics of ``predict`` on labelled ``examples``, and the predictions."""
        predicted = self.predict(predict, examples, split, desc)
        return scores(self.run.task, gold_labels(self.run.task, examples), predicted), predicted

    def predict(self, predict: Any, examples: Sequence, split: str, desc: str | None = None) -> list:
        return labels_from_probs(self.run.task, self.probabilities(predict, examples, split, desc=desc))

    def probabilities(self, predict: Any, examples: Sequence, split: str, rows: Sequence[int] | None = None,
                      batch_size: int | None = None, desc: str | None = None) -> list:
        """Per-example probabilities of ``predict`` on ``examples`` (only those at ``rows``, when given),
        in batches of ``batch_size`` sentences (default ``train.eval_batch_size``), under a progress bar
        named ``desc`` (default: the split) when ``train.progress`` is on."""
        from fmkit.train import accelerator_for

        features = self.encode(split, examples)
        if rows is not None:
            wanted = set(rows)
            features = [f for f in features if f.example in wanted]
        train = self.run.config.train
        accelerator = accelerator_for(train.precision)
        shown = train.progress and accelerator.is_main_process
        probs = example_probs(self.run.task, features, len(examples), predict, batch_size or train.eval_batch_size,
                              self.pad_id, accelerator.device, progress=(desc or split) if shown else None)
        return probs if rows is None else [probs[r] for r in rows]


def assess(scorer: Scorer, ensemble: Any, data: TaskData, hardeners: list,
           builder: Any) -> tuple[dict[str, Any], str, dict[str, list]]:
    """Clean metrics of every member and of the combination, on dev and (when there is one) test,
    the metrics under the harden plugins' attacks (see ``attack_targets``), the per-label reports, and
    the combination's clean predictions per split (saved, so ``fmkit compare`` can resample them)."""
    run = scorer.run
    splits = {"dev": data.dev, **({"test": data.test} if data.test else {})}
    metrics: dict[str, Any] = {"task": run.task.kind, "primary_metric": run.task.primary_metric,
                               "data": data.description}
    reports, clean = [], {}
    sizes = " and ".join(f"{split} ({len(examples)})" for split, examples in splits.items())
    count = len(ensemble.members)
    run.say(f"evaluating on {sizes}" + (f": the combination and its {count} members" if count > 1 else ""))
    for split, examples in splits.items():
        result, clean[split] = scorer.evaluate(ensemble.predict_proba, examples, split)
        result["per_type"] = per_type_scores(run.task, gold_labels(run.task, examples), clean[split])
        reports.append(f"== {split} ({len(examples)} examples) ==\n{result.pop('report')}")
        metrics[split] = result
    members: dict[str, Any] = {}
    attacks = attacks_of(hardeners)
    targets = attack_targets(ensemble) if attacks else {}
    scored = {"test": splits["test"]} if "test" in splits else splits  # an attack costs ~2 passes per step, and
    # dev picked the epoch: the held-out split only
    member_metrics = getattr(builder, "member_metrics", None)  # optional, see ModelBuilder
    for member in ensemble.members:
        entry: dict[str, Any] = {"trainable_params": member.trainable_params, "total_params": member.total_params,
                                 "train_seconds": round(member.train_seconds, 1)}
        own = clean
        if len(ensemble.members) == 1:
            entry.update({s: metrics[s] for s in splits})
        else:
            own = {}
            for split, examples in splits.items():
                result, own[split] = scorer.evaluate(softmax_predictor(member.model), examples, split)
                result.pop("report")
                entry[split] = result
        if member.name in targets:
            entry["robust"] = robust_metrics(scorer, member.model, attacks, scored, own)
        if member_metrics is not None:
            entry.update(member_metrics(member.model, scorer, splits, hardeners))
        members[member.name] = entry
    metrics["members"] = members
    if None in targets:
        metrics["robust"] = robust_metrics(scorer, targets[None], attacks, scored, clean)
        if len(members) == 1:
            next(iter(members.values()))["robust"] = metrics["robust"]
    return metrics, "\n".join(reports), clean


def attack_targets(ensemble: Any) -> dict[str | None, Any]:
    """What robust evaluation attacks: under the key None the one model the run predicts with (its only
    member, a soup, a soft vote over adapters on one backbone: the ensemble's optional ``attackable``),
    else, when the combination has no gradient, every member under its name."""
    members = ensemble.members
    if len(members) == 1:
        return {None: members[0].model}
    attackable = getattr(ensemble, "attackable", None)
    combined = attackable() if callable(attackable) else None
    return {None: combined} if combined is not None else {m.name: m.model for m in members}


def robust_metrics(scorer: Scorer, model: Any, attacks: dict[str, Any], splits: dict[str, Sequence],
                   clean: dict[str, list]) -> dict[str, Any]:
    """``{attack: {split: metrics}}`` of ``model`` on inputs perturbed by each Hardener's ``attack``,
    with the attack success rate against the clean predictions ``clean[split]``."""
    import torch

    task = scorer.run.task
    out: dict[str, Any] = {}
    for name, hardener in attacks.items():
        out[name] = {}
        for split, examples in splits.items():
            if getattr(hardener, "attack_examples", None) is not None:
                out[name][split] = rewritten_metrics(scorer, model, name, hardener, examples, split, clean[split])
                continue
            scorer.run.say(f"evaluating under the {name} attack on {split} ({len(examples)}): "
                           "every attack step is a forward and a backward pass")

            def attacked(batch: dict, hardener: Any = hardener) -> Any:
                rows = len(batch["input_ids"])
                size = -(-rows // getattr(model, "attack_slices", 1))  # see types.Ensemble: attackable()
                logits = [hardener.attack(model, {k: v[i:i + size] for k, v in batch.items()})
                          for i in range(0, rows, size)]
                return torch.softmax(torch.cat(logits).float(), dim=-1)

            result, predicted = scorer.evaluate(attacked, examples, split, desc=f"{split} under {name}")
            result.pop("report")
            result["attack_success_rate"] = attack_success_rate(gold_labels(task, examples), clean[split], predicted)
            out[name][split] = result
    return out


ATTACK_SAMPLES = 20
"""Successful attacks kept per attack and split (``attacks.jsonl``)."""


def rewritten_metrics(scorer: Scorer, model: Any, name: str, hardener: Any, examples: Sequence, split: str,
                      clean: list) -> dict[str, Any]:
    """Metrics of ``model`` on the examples a Hardener's ``attack_examples`` rewrote (see types.Hardener), the
    attack's success rate and cost, and under ``samples`` up to ``ATTACK_SAMPLES`` of its successes."""
    task = scorer.run.task
    scorer.run.say(f"evaluating under the {name} attack on {split} ({len(examples)}): it rewrites each example "
                   "in several forward passes")
    perturbed, cost = hardener.attack_examples(model, examples)
    key = f"{split} under {name}"  # encoded for this model only: not kept
    result, predicted = scorer.evaluate(softmax_predictor(model), perturbed, key)
    scorer.features.pop(key, None)
    result.pop("report")
    gold = gold_labels(task, examples)
    result["attack_success_rate"] = attack_success_rate(gold, clean, predicted)
    result.update(cost)
    result["samples"] = attack_samples(examples, perturbed, gold, clean, predicted, name, split)
    return result


def attack_samples(examples: Sequence, perturbed: Sequence, gold: list, clean: list, attacked: list, attack: str,
                   split: str) -> list[dict[str, Any]]:
    """Rewritten examples that the attack made worse (fewer labels right: the label, or a sentence's tags),
    those predicted right before first: the original and perturbed text, the gold labels and the
    predictions before and after."""
    def right(i: int, predicted: list) -> int:
        pairs = zip(gold[i], predicted[i]) if isinstance(gold[i], list) else [(gold[i], predicted[i])]
        return sum(g == p for g, p in pairs)

    changed = [i for i in range(len(examples)) if right(i, attacked) < right(i, clean)
               and text_of(perturbed[i]) != text_of(examples[i])]
    changed.sort(key=lambda i: (clean[i] != gold[i], right(i, attacked) - right(i, clean)))
    return [{"attack": attack, "split": split, "original": text_of(examples[i]), "perturbed": text_of(perturbed[i]),
             "gold": gold[i], "before": clean[i], "after": attacked[i]} for i in changed[:ATTACK_SAMPLES]]


def text_of(example: Any) -> str:
    """An example as a person reads it: a sentence's words joined by spaces, or a text (and its pair)."""
    if hasattr(example, "words"):
        return " ".join(example.words)
    return example.text if example.text_pair is None else f"{example.text} | {example.text_pair}"
