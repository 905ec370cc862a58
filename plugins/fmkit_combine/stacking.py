"""Stacking (Wolpert 1992) on K folds: member i trains on every fold but fold i, and a scikit-learn
LogisticRegression learns to combine from out-of-fold predictions only (each training row scored
by the one member that never saw it). At prediction time it reads the members' mean probabilities.
The meta-learner is saved with skops (``model/stacking.skops``), which loads without pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pydantic import Field

from fmkit.plugin import FitCallback, FmkitError, Member, MemberSpec, Run, Task, softmax_predictor
from fmkit_combine.members import Combine, CombineOptions, Members
from fmkit_combine.vote import Vote

META_FILE = "stacking.skops"


def assign_folds(n: int, k: int, seed: int) -> list[int]:
    """The fold of each of ``n`` rows: a seeded shuffle cut into ``k`` near-equal parts."""
    if k > n:
        raise FmkitError(f"stacking.members={k}: each member holds out one of {k} folds, but the training split has "
                         f"only {n} examples; lower stacking.members")
    fold = np.empty(n, dtype=int)
    for f, rows in enumerate(np.array_split(np.random.default_rng(seed).permutation(n), k)):
        fold[rows] = f
    return fold.tolist()


def out_of_fold(members: Sequence[Member], folds: Sequence[int],
                probabilities: Callable[[Member, list[int]], list]) -> list[np.ndarray]:
    """Each training row's probabilities from the member that held out its fold (never trained on it)."""
    out: list[Any] = [None] * len(folds)
    for f, member in enumerate(members):
        rows = [r for r, g in enumerate(folds) if g == f]
        if set(rows) & set(member.spec.indices or []):
            raise FmkitError(f"stacking: member {member.name} trained on rows of its own fold")
        for row, probs in zip(rows, probabilities(member, rows)):
            out[row] = probs
    return out


def features(probs: np.ndarray) -> np.ndarray:
    """Meta-learner inputs: log-probabilities, (rows or words, classes)."""
    return np.log(np.clip(np.atleast_2d(probs), 1e-12, 1.0))


def targets(task: Task, examples: Sequence) -> np.ndarray:
    """Class ids in the order ``features`` stacks them: one per example, or one per word for NER."""
    ids = task.label2id
    if task.kind == "ner":
        return np.array([ids.get(t, ids["O"]) for e in examples for t in e.tags])
    return np.array([ids[e.label] for e in examples])


class Stacked(Vote):
    """Members' mean probabilities, recombined by the fitted meta-learner."""

    def __init__(self, members: list[Member], meta: Any, extra: dict[str, Any]):
        super().__init__(members, extra=extra)
        self.meta = meta

    def predict_proba(self, batch: dict) -> Any:
        import torch

        mean = self.member_probabilities(batch).mean(0)
        flat = mean.reshape(-1, mean.shape[-1]).cpu().numpy()
        out = np.zeros_like(flat)
        out[:, self.meta.classes_] = self.meta.predict_proba(features(flat))  # classes never seen stay at 0
        return torch.from_numpy(out).view(mean.shape).to(mean.device)

    def attackable(self) -> None:
        """The scikit-learn meta-learner has no gradient: robust evaluation attacks the members."""
        return None

    def combine_code(self) -> str:
        """The meta-learner of ``predict_proba`` for the model card, on the members' probabilities outside fmkit."""
        return ('import numpy as np\nimport skops.io\n\n'
                'meta = skops.io.load(f"{model_dir}/{state[\'meta_learner\']}", trusted=[])\n'
                'mean = torch.stack(probs).mean(0).numpy()\n'
                'flat = mean.reshape(-1, mean.shape[-1])\n'
                'combined = np.zeros_like(flat)\n'
                'combined[:, meta.classes_] = meta.predict_proba(np.log(np.clip(flat, 1e-12, 1.0)))\n'
                'combined = torch.from_numpy(combined.reshape(mean.shape))')

    def save(self, directory: Path) -> None:
        import skops.io

        skops.io.dump(self.meta, Path(directory) / META_FILE)


def stack(run: Run, fit: FitCallback, plugin: Combine) -> Stacked:
    from sklearn.linear_model import LogisticRegression

    folds = assign_folds(len(run.data.train), plugin.options.members, run.seed)
    members = Members(run, fit, plugin).train(plugin.specs(run), plugin.note)
    oof = out_of_fold(members, folds, lambda m, rows: fit.probabilities(softmax_predictor(m.model), "train", rows))
    x, y = np.concatenate([features(p) for p in oof]), targets(run.task, run.data.train)
    meta = LogisticRegression(C=plugin.options.C, max_iter=1000).fit(x, y)
    run.say(f"stacking: LogisticRegression fitted on {len(y):,} out-of-fold "
            f"{'words' if run.task.kind == 'ner' else 'examples'}, training accuracy {meta.score(x, y):.4f}")
    return Stacked(members, meta, {"meta_learner": META_FILE, "folds": folds})


def restore(members: list[Member], state: dict[str, Any], directory: Path) -> Stacked:
    import skops.io

    path = Path(directory) / state["meta_learner"]
    try:
        meta = skops.io.load(path, trusted=[])  # scikit-learn's own types only: nothing else may load
    except Exception as exc:
        raise FmkitError(f"{path}: cannot load the stacking meta-learner ({type(exc).__name__}: {exc})") from None
    return Stacked(members, meta, {k: v for k, v in state.items() if k not in ("weights", "vote")})


class Stacking(Combine):
    """Stacking on K folds: a LogisticRegression meta-learner fitted on out-of-fold predictions only."""

    name = "stacking"
    # No trunk: one trained on all rows would have seen every member's held-out fold, and its out-of-fold
    # predictions would not be. Each member trains from its own seed; to bound that cost, 2 epochs in
    # batches of 8 (twice the optimizer steps of batches of 16 at the same cost) unless train.* is set.
    train_defaults = {"epochs": 2, "batch_size": 8}

    class Options(CombineOptions):
        members: int = Field(5, ge=2, description="members, one per fold: member i trains on every fold but fold i")
        C: float = Field(1.0, gt=0, description="inverse regularisation strength of the LogisticRegression meta-learner")

    combination = "a LogisticRegression meta-learner on the members' out-of-fold probabilities"

    def specs(self, run: Run) -> list[MemberSpec]:
        """Member i trains on every fold but fold i (the folds are seeded by the run's seed)."""
        n = len(run.data.train)
        folds = assign_folds(n, self.options.members, run.seed)
        specs = super().specs(run)
        for f, spec in enumerate(specs):
            spec.indices = [r for r in range(n) if folds[r] != f]
        return specs

    def note(self, spec: MemberSpec) -> str:
        return f", fold {int(spec.name[1:])} held out"

    def combine(self, run: Run, fit: FitCallback) -> Stacked:
        return stack(run, fit, self)

    def restore(self, run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Stacked:
        return restore(members, state, directory)
