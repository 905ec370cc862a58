"""``fmkit run`` end to end: config -> plugins -> data -> pretrain -> fuse -> combine(fit -> adapt ->
train[harden]) -> evaluate -> run directory; and reloading a saved run for eval/predict."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fmkit import rundir
from fmkit.checkpoint import (MemberCheckpoints, RunCheckpoints, abandon, open_partial, trainable_state,
                              unreadable_weights)
from fmkit.config import RunConfig, TrainConfig, describe_validation_error
from fmkit.data import TaskData, load_task_data
from fmkit.data.batching import IndexedFeatures
from fmkit.data.encode import Feature, encode
from fmkit.errors import FmkitError
from fmkit.evaluate import (attack_success_rate, example_probs, gold_labels, labels_from_probs, scores,
                            softmax_predictor)
from fmkit.model import TextModelBuilder, count_parameters, start_at_label_prior
from fmkit.plugins import Selection, select
from fmkit.types import Foundation, Member, MemberSpec, ModelBuilder, Run, Task

MODEL_DIR = "model"
ENSEMBLE_FILE = "ensemble.json"


class SingleModel:
    """The combine stage's default: one member, its own probabilities."""

    def __init__(self, member: Member):
        self.members = [member]
        self._predict = softmax_predictor(member.model)

    def predict_proba(self, batch: dict) -> Any:
        return self._predict(batch)

    def state(self) -> dict[str, Any]:
        return {}


@dataclass
class Prepared:
    """What training and evaluation share: the task model builder, encoded splits and the device."""

    run: Run
    selection: Selection
    builder: ModelBuilder
    foundation: Foundation
    features: dict[str, list[Feature]] = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        return self.foundation.tokenizer.pad_token_id or 0

    def encode(self, split: str, examples: list) -> list[Feature]:
        if split not in self.features:
            self.features[split] = encode(self.run.task, examples, self.foundation.tokenizer, self.run.config.train.max_length)
        return self.features[split]

    def evaluate(self, predict: Any, examples: list, split: str) -> tuple[dict[str, Any], list]:
        """Metrics of ``predict`` (batch -> probabilities) on labelled ``examples``, and the predictions."""
        predicted = self.predict(predict, examples, split)
        return scores(self.run.task, gold_labels(self.run.task, examples), predicted), predicted

    def predict(self, predict: Any, examples: list, split: str) -> list:
        return labels_from_probs(self.run.task, self.probabilities(predict, examples, split))

    def probabilities(self, predict: Any, examples: list, split: str, rows: Sequence[int] | None = None,
                      batch_size: int | None = None) -> list:
        """Per-example probabilities of ``predict`` on ``examples`` (only those at ``rows``, when given),
        in batches of ``batch_size`` sentences (default ``train.eval_batch_size``)."""
        from fmkit.train import accelerator_for

        features = self.encode(split, examples)
        if rows is not None:
            wanted = set(rows)
            features = [f for f in features if f.example in wanted]
        train = self.run.config.train
        probs = example_probs(self.run.task, features, len(examples), predict, batch_size or train.eval_batch_size,
                              self.pad_id, accelerator_for(train.precision).device)
        return probs if rows is None else [probs[r] for r in rows]


def apply_train_defaults(config: RunConfig, selection: Selection) -> RunConfig:
    """Plugins may bring better training defaults (``train_defaults``, e.g. a higher LR for LoRA);
    anything the user set explicitly wins."""
    update = {}
    for plugin in selection.plugins:
        for key, value in getattr(plugin, "train_defaults", {}).items():
            if key not in config.train.model_fields_set:
                update[key] = value
    if not update:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update=update)})


def member_settings(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    from pydantic import ValidationError

    try:
        return TrainConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise FmkitError(describe_validation_error(exc, prefix="train", model=TrainConfig)) from None


class Fit:
    """The ``fit(spec) -> Member`` callback handed to the combine stage, with what combiners need
    besides training: a fresh adapted model, and probabilities of any predictor on a split."""

    def __init__(self, prepared: Prepared, hardeners: list, checkpoints: RunCheckpoints | None = None):
        self.prepared, self.hardeners, self.checkpoints = prepared, hardeners, checkpoints
        self.train_features = prepared.encode("train", prepared.run.data.train)
        self.by_example: dict[int, list[int]] = {}
        for position, f in enumerate(self.train_features):
            self.by_example.setdefault(f.example, []).append(position)

    def model(self, seed: int) -> Any:
        """A freshly built task model, prepared by the adapt stage; ``seed`` fixes its new weights."""
        from accelerate.utils import set_seed

        set_seed(seed)
        model = self.prepared.builder.build()
        start_at_label_prior(model, self.prepared.run.task, self.prepared.run.data.train)
        return self.prepared.selection.manager.hook.fmkit_adapt(run=self.prepared.run, model=model)

    def probabilities(self, predict: Any, split: str, rows: Sequence[int] | None = None) -> list:
        """Per-example probabilities of ``predict`` (batch -> probabilities) on a split of the run's data.
        Training rows, which combiners score between members (boosting's errors, stacking's out-of-fold
        predictions), go in training-size batches: in prediction-size batches, scoring the whole
        training split set the run's memory peak (measured in docs/ensembles.md)."""
        train = self.prepared.run.config.train
        return self.prepared.probabilities(predict, getattr(self.prepared.run.data, split), split, rows,
                                           train.batch_size if split == "train" else None)

    def __call__(self, spec: MemberSpec) -> Member:
        from fmkit.train import train

        prepared, run = self.prepared, self.prepared.run
        settings = member_settings(run.config.train, spec.options)
        started = time.perf_counter()
        model = self.model(spec.seed) if spec.model is None else spec.model
        saved = self.checkpoints.member(spec.name) if self.checkpoints is not None else None
        if saved is not None and saved.done():  # trained before an interruption
            return self.restore(spec, model, saved)
        examples = range(len(run.data.train)) if spec.indices is None else spec.indices
        rows, weights = [], []
        for position, example in enumerate(examples):
            for row in self.by_example[example]:
                rows.append(row)
                if spec.weights is not None:
                    weights.append(float(spec.weights[position]))
        report = train(
            run, model, IndexedFeatures(self.train_features, rows),
            lambda m: prepared.evaluate(softmax_predictor(m), run.data.dev, "dev")[0],
            settings=settings, seed=spec.seed, pad_id=prepared.pad_id,
            label=f"{spec.name}: " if spec.name != "model" else "",
            weights=weights or None, hardeners=self.hardeners, checkpoints=saved, stop_after=spec.stop_after,
            start_after=spec.start_after,
        )
        trainable, total = count_parameters(model)
        member = Member(spec, model, {k: v for k, v in report.best_dev.items() if k != "report"},
                        time.perf_counter() - started, trainable, total)
        record = dict(name=spec.name, best_epoch=report.best_epoch, epochs_run=report.epochs_run,
                      seconds=round(member.train_seconds, 2),
                      sentences_per_second=round(report.sentences_per_second, 2),
                      trainable_params=trainable, total_params=total, dev=member.dev_metrics)
        run.log("member", **record)
        if saved is not None:
            saved.save_done(trainable_state(model), record)
        return member

    def restore(self, spec: MemberSpec, model: Any, saved: MemberCheckpoints) -> Member:
        """A member trained before an interruption (or by a Ray worker): its weights, put into ``model``."""
        from fmkit.train import accelerator_for

        record = saved.load_done(model)
        model.to(accelerator_for(self.prepared.run.config.train.precision).device).eval()
        self.prepared.run.log("member", **record, restored=True)
        return Member(spec, model, record["dev"], record["seconds"], record["trainable_params"], record["total_params"])

    def map(self, specs: Sequence[MemberSpec]) -> list[Member]:
        """Train independent members: one after another, or as Ray tasks with ``--executor ray``."""
        from fmkit.executors import fit_all

        return fit_all(self, list(specs))


def prepare(run: Run, selection: Selection, foundation: Foundation) -> tuple[Prepared, list]:
    """The fuse and harden stages: what training and evaluation share (a Ray worker rebuilds it too)."""
    hook = selection.manager.hook
    builder = hook.fmkit_fuse(run=run, foundation=foundation) or TextModelBuilder(
        foundation, run.task, run.config.trust_remote_code)
    hardeners = list(reversed(hook.fmkit_harden(run=run)))  # pluggy answers last-registered first
    return Prepared(run, selection, builder, foundation), hardeners


def execute(config: RunConfig, selection: Selection | None = None, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train, evaluate and save one run; return the run directory and its metrics. ``resume``: continue
    the interrupted run of that name from its checkpoints. Under ``accelerate launch`` every process
    trains; only the main one writes the run directory."""
    from fmkit.executors import check_executor
    from fmkit.train import processes

    selection = selection or select(config)
    check_executor(config)
    config = apply_train_defaults(config, selection)
    task, data = load_task_data(config)
    group = processes()
    name = rundir.run_name(config.name)
    if group.num_processes > 1:  # a timestamp name must be the main process's
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name])[0]
    target = rundir.check_target(config.runs_dir, name, config.overwrite)
    started = time.perf_counter()
    partial = open_partial(target, config.model_copy(update={"name": name}), resume, group.is_main_process)
    group.wait_for_everyone()
    run = Run(config, task, data, partial)
    checkpoints = RunCheckpoints(partial, group.is_main_process, lambda: run.log_text)
    try:
        run.say(f"data: {data.description}")
        hook = selection.manager.hook
        foundation = hook.fmkit_pretrain(run=run)
        prepared, hardeners = prepare(run, selection, foundation)
        if resume:
            run.restore_log(checkpoints.log_text())
        fit = Fit(prepared, hardeners, checkpoints)
        ensemble = hook.fmkit_combine(run=run, fit=fit) or SingleModel(fit(MemberSpec("model", seed=config.seed)))
        metrics, report = evaluate_ensemble(prepared, ensemble, data, hardeners)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        if group.is_main_process:
            save(run, selection, foundation, ensemble, metrics, report, target)
    except BaseException as exc:
        if group.is_main_process:
            abandon(partial, target, exc)
        raise
    if group.is_main_process:
        checkpoints.remove()
        rundir.finish(partial, target)
    group.wait_for_everyone()
    return target, metrics


def evaluate_ensemble(prepared: Prepared, ensemble: Any, data: TaskData, hardeners: list) -> tuple[dict[str, Any], str]:
    """Clean metrics of every member and of the combination, on dev and (when there is one) test,
    the metrics under the harden plugins' attacks (see ``attack_targets``), and the per-label reports."""
    run = prepared.run
    splits = {"dev": data.dev, **({"test": data.test} if data.test else {})}
    metrics: dict[str, Any] = {"task": run.task.kind, "primary_metric": run.task.primary_metric,
                               "data": data.description}
    reports, clean = [], {}
    sizes = " and ".join(f"{split} ({len(examples)})" for split, examples in splits.items())
    count = len(ensemble.members)
    run.say(f"evaluating on {sizes}" + (f": the combination and its {count} members" if count > 1 else ""))
    for split, examples in splits.items():
        result, clean[split] = prepared.evaluate(ensemble.predict_proba, examples, split)
        reports.append(f"== {split} ({len(examples)} examples) ==\n{result.pop('report')}")
        metrics[split] = result
    members: dict[str, Any] = {}
    attacks = {getattr(h, "name", type(h).__name__): h for h in hardeners
               if getattr(h, "attack", None) is not None}  # attack = None: a training loss only (e.g. distill)
    targets = attack_targets(ensemble) if attacks else {}
    scored = {"test": splits["test"]} if "test" in splits else splits  # an attack costs ~2 passes per step, and
    # dev picked the epoch: the held-out split only
    member_metrics = getattr(prepared.builder, "member_metrics", None)  # optional, see ModelBuilder
    for member in ensemble.members:
        entry: dict[str, Any] = {"trainable_params": member.trainable_params, "total_params": member.total_params,
                                 "train_seconds": round(member.train_seconds, 1)}
        own = clean
        if len(ensemble.members) == 1:
            entry.update({s: metrics[s] for s in splits})
        else:
            own = {}
            for split, examples in splits.items():
                result, own[split] = prepared.evaluate(softmax_predictor(member.model), examples, split)
                result.pop("report")
                entry[split] = result
        if member.name in targets:
            entry["robust"] = robust_metrics(prepared, member.model, attacks, scored, own)
        if member_metrics is not None:
            entry.update(member_metrics(member.model, prepared, splits, hardeners))
        members[member.name] = entry
    metrics["members"] = members
    if None in targets:
        metrics["robust"] = robust_metrics(prepared, targets[None], attacks, scored, clean)
        if len(members) == 1:
            next(iter(members.values()))["robust"] = metrics["robust"]
    return metrics, "\n".join(reports)


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


def robust_metrics(prepared: Prepared, model: Any, attacks: dict[str, Any], splits: dict[str, list],
                   clean: dict[str, list]) -> dict[str, Any]:
    """``{attack: {split: metrics}}`` of ``model`` on inputs perturbed by each Hardener's ``attack``,
    with the attack success rate against the clean predictions ``clean[split]``."""
    import torch

    task = prepared.run.task
    out: dict[str, Any] = {}
    for name, hardener in attacks.items():
        out[name] = {}
        for split, examples in splits.items():
            prepared.run.say(f"evaluating under the {name} attack on {split} ({len(examples)}): "
                             "every attack step is a forward and a backward pass")

            def attacked(batch: dict, hardener: Any = hardener) -> Any:
                rows = len(batch["input_ids"])
                size = -(-rows // getattr(model, "attack_slices", 1))  # see types.Ensemble: attackable()
                logits = [hardener.attack(model, {k: v[i:i + size] for k, v in batch.items()})
                          for i in range(0, rows, size)]
                return torch.softmax(torch.cat(logits).float(), dim=-1)

            result, predicted = prepared.evaluate(attacked, examples, split)
            result.pop("report")
            result["attack_success_rate"] = attack_success_rate(gold_labels(task, examples), clean[split], predicted)
            out[name][split] = result
    return out


def save(run: Run, selection: Selection, foundation: Foundation, ensemble: Any, metrics: dict, report: str,
         target: Path) -> None:
    """Write model(s), config.json, metrics.json, report.txt and log.jsonl into the run directory."""
    import fmkit
    from fmkit.model import quiet_transformers

    directory = run.directory
    model_dir = directory / MODEL_DIR
    with quiet_transformers():
        save_models(ensemble, model_dir)
        foundation.tokenizer.save_pretrained(model_dir)
    rundir.write_json(directory / "config.json", {
        "fmkit_version": fmkit.__version__,
        "run": target.name,
        "config": run.config.model_dump(mode="json"),
        "plugins": selection.describe(),
        "foundation": {"path": _portable(foundation.path, directory), "source": foundation.source},
        "task": asdict(run.task),
    })
    rundir.write_json(directory / "metrics.json", metrics)
    rundir.write_text(directory / "report.txt", "\n".join(run.notes) + "\n\n" + report)
    rundir.write_text(directory / "log.jsonl", run.log_text)


def save_models(ensemble: Any, model_dir: Path) -> None:
    """One member: ``model/`` is its checkpoint. Several: ``model/members/NAME/`` + ``ensemble.json``."""
    if len(ensemble.members) == 1 and not ensemble.state():
        ensemble.members[0].model.save_pretrained(model_dir)
        return
    for member in ensemble.members:
        member.model.save_pretrained(model_dir / "members" / member.name)
    if callable(getattr(ensemble, "save", None)):  # optional: what JSON cannot hold (see types.Ensemble)
        ensemble.save(model_dir)
    rundir.write_json(model_dir / ENSEMBLE_FILE, {
        "members": [{"name": m.name, "seed": m.spec.seed,
                     "indices": list(m.spec.indices) if m.spec.indices is not None else None,
                     "weights": [round(w, 6) for w in m.spec.weights] if m.spec.weights is not None else None}
                    for m in ensemble.members],
        "state": ensemble.state(),
    })


def _portable(path: str, directory: Path) -> str:
    """A foundation saved inside the run directory is recorded relative to it: the run moves into place
    after saving, and may be copied elsewhere later."""
    inside = Path(path).resolve()
    return str(inside.relative_to(directory.resolve())) if inside.is_relative_to(directory.resolve()) else str(path)


@dataclass
class LoadedRun:
    """A saved run, ready to predict: its Run context, the shared Prepared state and the ensemble."""

    run: Run
    prepared: Prepared
    ensemble: Any
    attacks: dict[str, Any] = field(default_factory=dict)  # name -> Hardener, for ``fmkit eval --attack``


def with_attack(config: RunConfig, attack: str, settings: Sequence[str]) -> RunConfig:
    """The saved config with the harden plugin ``attack`` selected too, its options updated by
    ``settings`` (``NAME.OPTION=VALUE``, options of that plugin only)."""
    from fmkit.config import parse_setting
    from fmkit.plugins import discover, lookup

    info = lookup(attack, discover())
    if info.stage != "harden":
        raise FmkitError(f"--attack {attack}: not a harden plugin (it serves the {info.stage} stage)")
    options = {name: dict(values) for name, values in config.plugin_options.items()}
    for item in settings:
        path, value = parse_setting(item)
        if len(path) != 2 or path[0] != attack:
            raise FmkitError(f"--set {item}: eval takes options of the --attack plugin only, e.g. {attack}.eval_steps=20")
        options.setdefault(attack, {})[path[1]] = value
    plugins = config.plugins if attack in config.plugins else [*config.plugins, attack]
    return config.model_copy(update={"plugins": plugins, "plugin_options": options})


def load(run_dir: Path, attack: str | None = None, settings: Sequence[str] = ()) -> LoadedRun:
    """Rebuild a saved run's ensemble for eval/predict, from its config.json and model/ folder;
    with ``attack``, also that harden plugin's Hardener for robust evaluation."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FmkitError(f"{run_dir}: not a run directory (no config.json)")
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        config = RunConfig.model_validate(saved["config"])
        task = Task(**saved["task"])
        foundation_path = saved["foundation"]["path"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FmkitError(f"{config_file}: unreadable or from another fmkit version ({exc})") from None
    if attack:
        config = with_attack(config, attack, settings)
    selection = select(config)
    model_dir = run_dir / MODEL_DIR
    from transformers import AutoTokenizer

    from fmkit.model import quiet_transformers

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (run_dir / foundation_path).is_dir():  # a backbone saved inside the run (e.g. by mlm)
        foundation_path = str(run_dir / foundation_path)
    foundation = Foundation(foundation_path, tokenizer, saved["foundation"].get("source", ""))
    run = Run(config, task, None, None)
    hook = selection.manager.hook
    builder = hook.fmkit_fuse(run=run, foundation=foundation) or TextModelBuilder(foundation, task, config.trust_remote_code)
    prepared = Prepared(run, selection, builder, foundation)
    from fmkit.train import accelerator_for

    device = accelerator_for(config.train.precision).device

    def member(spec: MemberSpec, directory: Path) -> Member:
        try:
            model = hook.fmkit_adapt_load(run=run, builder=builder, directory=directory).to(device).eval()
        except FmkitError:
            raise
        except Exception as exc:  # a truncated or foreign weights file: name it, in one line
            raise FmkitError(unreadable_weights(directory, exc)) from None
        trainable, total = count_parameters(model)
        return Member(spec, model, trainable_params=trainable, total_params=total)

    ensemble_file = model_dir / ENSEMBLE_FILE
    if ensemble_file.is_file():
        layout = json.loads(ensemble_file.read_text(encoding="utf-8"))
        members = [member(MemberSpec(m["name"], m["seed"], m.get("indices"), m.get("weights")),
                          model_dir / "members" / m["name"])
                   for m in layout["members"]]
        ensemble = hook.fmkit_combine_load(run=run, members=members, state=layout["state"], directory=model_dir)
        if ensemble is None:
            raise FmkitError(f"{run_dir}: saved as an ensemble, but no selected plugin can reload it")
    else:
        ensemble = SingleModel(member(MemberSpec("model", config.seed), model_dir))
    attacks = {p.name: p.fmkit_harden(run=run) for p in selection.plugins if p.name == attack}
    return LoadedRun(run, prepared, ensemble, attacks)
