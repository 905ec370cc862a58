"""Knowledge distillation as a third-party fmkit plugin (adapt stage): a student learns from a saved teacher
run, a single model or an ensemble, with the loss

    alpha * CE(student, gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where ``_T`` is a distribution softened by the temperature T (Hinton et al. 2015; the DistilBERT recipe).
On ``ner`` the soft targets are per token: the teacher's probabilities for each word, placed on the
student's first sub-token of that word, so teacher and student may use different tokenizers. A transfer set
(``distill.transfer``, Hinton's term: extra inputs, unlabelled) joins the training examples with the teacher's
predictions as labels, so the student learns the teacher beyond the teacher's own training rows, where its soft
targets carry little more than the gold labels.

It uses fmkit's public API (``fmkit.plugin``) only. The adapt stage decides what trains but not the loss, so
besides its own hook the plugin implements two others: the data stage, where the teacher scores the training
rows (and labels the transfer set, whose rows join them), and the harden stage, whose loss-only Hardener
(``attack = None``) trains on those soft targets. The soft targets travel from one to the other in
``run.plugin_state["distill"]``, so a Ray worker that trains a member has them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import (Example, FmkitError, ModelBuilder, Run, Task, create_plugin, encode, example_probs,
                          forward_logits, hookimpl, labels_from_probs, load_run, load_task_data, read_unlabeled,
                          softmax_predictor, task_loss)


class Distill:
    """Knowledge distillation: a student (any adapt method) learns the soft predictions of a teacher run."""

    name, stage = "distill", "adapt"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        teacher: Path | None = Field(None, description="run directory of the teacher (`fmkit run` output, single "
                                                       "model or ensemble); required")
        alpha: float = Field(0.5, ge=0, le=1, description="weight of the cross-entropy with the gold labels; the "
                                                          "soft-target term gets 1 - alpha")
        temperature: float = Field(2.0, gt=0, description="T: softens teacher and student alike; the soft term "
                                                          "is scaled by T^2 so its gradients keep their size")
        student: str = Field("full", description="the adapt plugin that prepares the student: full, adapter, ...")
        student_options: dict[str, Any] = Field({}, description="options of the student plugin, e.g. {r: 16} "
                                                                "for adapter")
        out_of_bag: bool = Field(False, description="an ensemble teacher whose members recorded their training rows "
                                                    "(bagging, stacking) gives each training example the mean of the "
                                                    "members that never trained on it, i.e. what it predicts on unseen "
                                                    "data; false: every member's")
        transfer: Path | None = Field(None, description="a transfer set (Hinton et al.): a file of extra, unlabelled "
                                                        "inputs that the teacher labels and the student trains on too. "
                                                        "ner: CoNLL (any tag column ignored) or plain text, one "
                                                        "sentence a line; classify: read like the run's data, without "
                                                        "labels. Inputs identical to a training example are skipped")

    def __init__(self, options: Options):
        self.options = options
        if options.student == self.name:
            raise FmkitError(f"distill.student: {options.student!r} is not another adapt plugin (e.g. full, adapter)")
        self.student = create_plugin(options.student, options.student_options, stage="adapt",
                                     option="distill.student", options_option="distill.student_options")

    @property
    def train_defaults(self) -> dict[str, Any]:
        return dict(getattr(self.student, "train_defaults", {}))

    def check(self, config: Any) -> None:
        if self.options.teacher is None:
            raise FmkitError("distill.teacher: name the teacher's run directory, e.g. --set distill.teacher=runs/NAME")
        if config.task == "multimodal":
            raise FmkitError("distill: multimodal runs are not supported (soft targets are matched on token ids)")
        if callable(getattr(self.student, "check", None)):
            self.student.check(config)

    @property
    def provides(self) -> frozenset[str]:
        return frozenset(getattr(self.student, "provides", ()))

    @hookimpl
    def fmkit_data(self, run: Run, train: Sequence[Example]) -> list[Example]:
        """The teacher scores the training rows and labels the transfer set, whose rows join them: they are then
        trained on like the labelled ones (and count in the head's label prior)."""
        transfer = [] if self.options.transfer is None else transfer_set(run, train, self.options.transfer)
        probs = teacher_probabilities(run, train, Path(self.options.teacher), self.options.out_of_bag, transfer)
        run.plugin_state[self.name] = probs  # for the harden hook, in this process or a Ray worker
        return [*train, *labelled_by_teacher(run.task, transfer, probs[len(train):])]

    @hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        return self.student.fmkit_adapt(run=run, model=model)

    @hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        return self.student.fmkit_adapt_load(run=run, builder=builder, directory=directory)

    @hookimpl
    def fmkit_adapt_share(self, run: Run, model: Any) -> Any:
        return self.student.fmkit_adapt_share(run=run, model=model) if hasattr(self.student, "fmkit_adapt_share") else None

    @hookimpl
    def fmkit_adapt_merge(self, run: Run, model: Any) -> Any:
        return self.student.fmkit_adapt_merge(run=run, model=model) if hasattr(self.student, "fmkit_adapt_merge") else model

    @hookimpl
    def fmkit_harden(self, run: Run) -> SoftTargets:
        """The distillation loss on the soft targets the data stage computed, matched to the windows of the
        student's tokenizer (``run.foundation``)."""
        return SoftTargets(run, run.foundation.tokenizer, run.plugin_state[self.name], self.options.alpha,
                           self.options.temperature)


def model_input(example: Any) -> tuple:
    """What a model reads of an example: its words (ner), or its text and text pair (classify)."""
    words = getattr(example, "words", None)
    return tuple(words) if words is not None else (example.text, example.text_pair)


def transfer_set(run: Run, train: Sequence[Example], path: Path) -> list:
    """The unlabelled examples of ``path``, less those whose input the student already trains on (a training
    example, or an earlier one of the file): a repeat would count twice in the loss. A file that cannot be
    read is a one-line error naming the option; the readers' own messages give the file and line."""
    try:
        examples = read_unlabeled(run.config, path)
    except FmkitError as exc:
        raise FmkitError(f"distill.transfer: {exc}") from None
    seen = {model_input(e) for e in train}
    kept = []
    for example in examples:
        if model_input(example) not in seen:
            seen.add(model_input(example))
            kept.append(example)
    skipped = len(examples) - len(kept)
    run.say(f"distill: transfer set {path}: {len(kept):,} examples join the {len(train):,} training "
            f"examples, labelled by the teacher; {skipped:,} skipped (the same input as a training example or an "
            "earlier one of the file)")
    run.log("distill_transfer", file=str(path), added=len(kept), skipped=skipped)
    return kept


def labelled_by_teacher(task: Task, examples: Sequence[Any], probs: list[Any]) -> list:
    """``examples`` with the teacher's decoded predictions as their labels, so the cross-entropy term trains on
    its hard labels there; on ner decoded as the core decodes predictions, so the tags form valid spans."""
    from dataclasses import replace

    field = "tags" if task.kind == "ner" else "label"
    return [replace(e, **{field: labels}) for e, labels in zip(examples, labels_from_probs(task, probs))]


def teacher_probabilities(run: Run, examples: Sequence[Example], directory: Path, out_of_bag: bool = False,
                          transfer: Sequence[Any] = ()) -> list[Any]:
    """The teacher's probabilities for each training example of the student's run, then for each ``transfer``
    example (scored by the whole teacher: no member trained on them), in the student's label order: (words,
    classes) per sentence for ner, (classes,) per text for classify."""
    import numpy as np

    if not (directory / "config.json").is_file():
        raise FmkitError(f"distill.teacher: {directory} is not a run directory (no config.json)")
    teacher = load_run(directory)
    task = teacher.run.task
    if task.kind != run.task.kind:
        raise FmkitError(f"distill.teacher: {directory} is a {task.kind} run; this run's task is {run.task.kind}")
    missing = [label for label in run.task.labels if label not in task.labels]
    if missing:
        raise FmkitError(f"distill.teacher: the teacher never predicts {', '.join(missing)} (its labels: "
                         f"{', '.join(task.labels)}); train it on the same data and scheme")
    columns = [task.labels.index(label) for label in run.task.labels]
    members = teacher.ensemble.members
    device = next(members[0].model.parameters()).device

    def score(predict: Any, split: str, rows: Sequence[Any]) -> list[Any]:
        return example_probs(task, teacher.scorer.encode(split, rows), len(rows), predict,
                             teacher.run.config.train.eval_batch_size, teacher.scorer.pad_id, device)

    how = ""
    if out_of_bag:
        samples = out_of_bag_members(teacher, examples, directory)  # bagging and stacking: uniform votes
        per_member = [score(softmax_predictor(m.model), "distill", examples) for m in members]
        probs = [np.mean([per_member[k][i] for k in ks], axis=0) for i, ks in enumerate(samples)]
        unseen = sum(len(ks) < len(members) for ks in samples)
        how = f", {unseen:,} of them by the members that never trained on them only"
    else:
        probs = score(teacher.ensemble.predict_proba, "distill", examples)
    if transfer:
        probs += score(teacher.ensemble.predict_proba, "transfer", transfer)
        how += f", and {len(transfer):,} transfer examples"
    run.say(f"distill: teacher {directory} ({len(members)} member(s)) scored {len(examples):,} training examples"
            + how)
    kept = [p[..., columns] for p in probs]  # labels the student never sees are dropped, the rest renormalised
    return [p / np.clip(p.sum(axis=-1, keepdims=True), 1e-12, None) for p in kept]


def out_of_bag_members(teacher: Any, examples: list, directory: Path) -> list[list[int]]:
    """For each of the student's training examples, the teacher members that never trained on it (all of
    them where every member did). Examples are matched to the teacher's training rows by content."""
    members = teacher.ensemble.members
    if len(members) < 2 or any(m.spec.indices is None for m in members):
        raise FmkitError(f"distill.out_of_bag: the teacher {directory} did not record which rows each member trained "
                         "on (bagging and stacking do); set distill.out_of_bag=false")

    def key(e: Any) -> tuple:
        return model_input(e), (tuple(e.tags or ()) if teacher.run.task.kind == "ner" else e.label)

    rows: dict[Any, set[int]] = {}
    for row, example in enumerate(load_task_data(teacher.run.config)[1].train):
        rows.setdefault(key(example), set()).add(row)
    samples = [set(m.spec.indices) for m in members]
    everyone = list(range(len(members)))
    return [[k for k, sample in enumerate(samples) if not rows.get(key(e), set()) & sample] or everyone
            for e in examples]


class SoftTargets:
    """A loss-only Hardener (``attack = None``: robust evaluation skips it): the distillation loss of a batch.

    Training batches carry token ids, not example numbers, so the soft targets are looked up by the exact
    ids of each window, encoded here as the core encodes the training split."""

    attack = None

    def __init__(self, run: Run, tokenizer: Any, probs: list[Any], alpha: float, temperature: float):
        import numpy as np

        self.name, self.kind = "distill", run.task.kind
        self.alpha, self.temperature = alpha, temperature
        self.misses = 0  # windows without soft targets (should stay 0): they train on the gold labels alone
        self.table: dict[tuple[int, ...], tuple[list[int], Any]] = {}
        for f in encode(run.task, run.data.train, tokenizer, run.config.train.max_length):
            p = probs[f.example]
            if self.kind == "ner":  # the words this window predicts, at their first sub-token
                positions, p = [pos for _, pos in f.word_positions], p[[w for w, _ in f.word_positions]]
            else:
                positions, p = [0], p[None]
            soft = np.power(np.clip(p, 1e-12, None), 1.0 / temperature)
            self.table[tuple(f.input_ids)] = (positions, soft / soft.sum(axis=-1, keepdims=True))

    def targets(self, batch: dict, classes: int) -> tuple[Any, Any]:
        """Softened teacher distributions (batch, tokens, classes) and the mask of positions that have one."""
        import torch

        ids, lengths = batch["input_ids"], batch["attention_mask"].sum(dim=1).tolist()
        width = ids.shape[1] if self.kind == "ner" else 1
        targets = torch.zeros((len(lengths), width, classes))
        mask = torch.zeros((len(lengths), width))
        for row, length in enumerate(lengths):
            found = self.table.get(tuple(ids[row, :length].tolist()))
            if found is None:
                self.misses += 1
                continue
            positions, soft = found
            targets[row, positions] = torch.as_tensor(soft, dtype=torch.float)
            mask[row, positions] = 1.0
        return targets.to(ids.device), mask.to(ids.device)

    def loss(self, logits: Any, batch: dict) -> Any:
        import torch

        targets, mask = self.targets(batch, logits.shape[-1])
        student = torch.log_softmax(logits.float().reshape(len(mask), -1, logits.shape[-1]) / self.temperature, dim=-1)
        kl = (targets * (torch.log(targets.clamp(min=1e-12)) - student)).sum(dim=-1)  # 0 where mask is 0
        soft = (kl * mask).sum() / mask.sum().clamp(min=1)
        return self.alpha * task_loss(logits, batch) + (1 - self.alpha) * self.temperature ** 2 * soft

    def train_step(self, model: Any, batch: dict, backward: Any) -> Any:
        loss = self.loss(forward_logits(model, batch), batch)
        backward(loss)
        return loss.detach()
