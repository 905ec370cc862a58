"""The run directory's contents: saving a finished run (models, config, metrics, report, log, model card)
and reloading a saved one for ``fmkit eval``, ``fmkit predict`` and ``fmkit.load``, through the same
stages as a run.

``model/`` loads with the standard calls, without fmkit or the foundation: a whole model (full fine-tune,
probe, soup) is its own checkpoint; an adapter is saved beside the plain model under it (``fmkit_adapt_base``:
the frozen backbone and head, with the label maps), in ``model/`` itself or, for an ensemble's members,
once in ``model/base/``."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fmkit import rundir
from fmkit.assess import Scorer
from fmkit.checkpoint import unreadable_weights
from fmkit.config import RunConfig, check_version
from fmkit.defaults import SingleModel
from fmkit.errors import FmkitError
from fmkit.model import count_parameters, quiet_transformers
from fmkit.registry import Selection, discover, lookup, select
from fmkit.stages import attacks
from fmkit.types import Foundation, Member, MemberSpec, Run, Task

MODEL_DIR = "model"
MEMBERS_DIR = "members"
BASE_DIR = "base"  # an ensemble's members' common base model, under model/
ENSEMBLE_FILE = "ensemble.json"
CARD_FILE = "README.md"
ATTACKS_FILE = "attacks.jsonl"  # successful attacks that rewrote the text (see without_attack_samples)
PREDICTIONS_DIR = "predictions"  # predictions/test.jsonl: gold and predicted labels per test example
WEIGHTS = {"config.json": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
           "adapter_config.json": ("adapter_model.safetensors", "adapter_model.bin")}
"""A model folder's config files and the weights each needs beside it."""


def save(run: Run, selection: Selection, ensemble: Any, metrics: dict, report: str, target: Path,
         predicted: dict[str, list] | None = None) -> None:
    """Write model(s), config.json, metrics.json, report.txt, log.jsonl, the model card (README.md), the
    test predictions beside their gold labels (``predictions/test.jsonl``, see ``save_predictions``) and
    ``report.html`` (``fmkit.report_html``)."""
    import fmkit
    from fmkit.card import model_card
    from fmkit.report_html import write_report

    directory = run.directory
    model_dir = directory / MODEL_DIR
    with quiet_transformers():
        save_models(run, ensemble, model_dir)
        run.foundation.tokenizer.save_pretrained(model_dir)
    record = {
        "fmkit_version": fmkit.__version__,
        "run": target.name,
        "config": run.config.model_dump(mode="json"),
        "plugins": selection.describe(),
        "foundation": {"path": _portable(run.foundation.path, directory), "source": run.foundation.source,
                       "origin": run.foundation.origin},
        "task": asdict(run.task),
    }
    rundir.write_json(directory / "config.json", record)
    metrics, samples = without_attack_samples(metrics)
    rundir.write_json(directory / "metrics.json", metrics)
    if samples:
        rundir.write_text(directory / ATTACKS_FILE, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    rundir.write_text(directory / "report.txt", "\n".join(run.notes) + "\n\n" + report)
    rundir.write_text(directory / "log.jsonl", run.log_text)
    rundir.write_text(directory / CARD_FILE, model_card(record, metrics, report, ensemble, model_dir, target))
    if predicted and "test" in predicted and run.data is not None and run.data.test:
        save_predictions(directory / PREDICTIONS_DIR / "test.jsonl", run, run.data.test, predicted["test"])
    try:  # last: drawn from the files above, and derived from them: a failure must not cost the run
        write_report(directory)
    except Exception as exc:
        run.say(f"report.html not written ({type(exc).__name__}: {exc}); `fmkit report RUN` writes it later")


def without_attack_samples(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``metrics`` less the successful attacks that attacks rewriting the text keep under ``samples`` (see
    ``assess.rewritten_metrics``), and those samples, for ``attacks.jsonl`` (tagged with the member when an
    ensemble's members were attacked one by one)."""
    import copy

    metrics = copy.deepcopy(metrics)  # keeps a single member's robust entry the same object as the run's
    found: list[dict[str, Any]] = []
    top = metrics.get("robust")
    places = [(None, top), *((name, entry.get("robust")) for name, entry in metrics.get("members", {}).items())]
    for member, robust in places:
        if not robust or (member is not None and robust is top):
            continue
        for by_split in robust.values():
            for result in by_split.values():
                found += [{**s, "member": member} if member else s for s in result.pop("samples", [])]
    return metrics, found


def save_predictions(path: Path, run: Run, examples: Sequence, predicted: list) -> None:
    """One JSON line per example, ``{"gold": ..., "pred": ...}`` (a sentence's tags, or a label): what
    ``fmkit compare`` resamples for its paired bootstrap, and what tells two runs' test sets apart."""
    from fmkit.evaluate import gold_labels

    gold = gold_labels(run.task, examples)
    rundir.write_text(path, "".join(json.dumps({"gold": g, "pred": p}, ensure_ascii=False, separators=(",", ":"))
                                    + "\n" for g, p in zip(gold, predicted)))


def save_models(run: Run, ensemble: Any, model_dir: Path) -> None:
    """One member: ``model/`` is its checkpoint. Several: ``model/members/NAME/`` + ``ensemble.json``. Either
    way with the plain model under an adapter (once for all members), so the standard calls load them."""
    if len(ensemble.members) == 1 and not ensemble.state():
        model = ensemble.members[0].model
        save_base(run, model, model_dir)
        model.save_pretrained(model_dir)
        return
    save_base(run, ensemble.members[0].model, model_dir / BASE_DIR)
    for member in ensemble.members:
        member.model.save_pretrained(model_dir / MEMBERS_DIR / member.name)
    if callable(getattr(ensemble, "save", None)):  # optional: what JSON cannot hold (see types.Ensemble)
        ensemble.save(model_dir)
    rundir.write_json(model_dir / ENSEMBLE_FILE, {
        "members": [{"name": m.name, "seed": m.spec.seed,
                     "indices": list(m.spec.indices) if m.spec.indices is not None else None,
                     "weights": [round(w, 6) for w in m.spec.weights] if m.spec.weights is not None else None}
                    for m in ensemble.members],
        "state": ensemble.state(),
    })


def save_base(run: Run, model: Any, directory: Path) -> None:
    """The plain model under ``model``'s adapter (``fmkit_adapt_base``), saved in ``directory``; nothing for a
    model that saves whole."""
    base = run.hook.fmkit_adapt_base(run=run, model=model)
    if base is not None:
        base.save_pretrained(directory)


def _portable(path: str, directory: Path) -> str:
    """A foundation saved inside the run directory is recorded relative to it: the run moves into place
    after saving, and may be copied elsewhere later."""
    inside = Path(path).resolve()
    return str(inside.relative_to(directory.resolve())) if inside.is_relative_to(directory.resolve()) else str(path)


@dataclass
class LoadedRun:
    """A saved run, ready to predict: its Run context, a Scorer for its task, the ensemble and the
    ModelBuilder of its fuse stage (what builds its task models)."""

    run: Run
    scorer: Scorer
    ensemble: Any
    builder: Any
    attacks: dict[str, Any] = field(default_factory=dict)  # name -> Hardener, for ``fmkit eval --attack``


def with_attack(config: RunConfig, attack: str, settings: Sequence[str]) -> RunConfig:
    """The saved config with the harden plugin ``attack`` selected too, its options updated by
    ``settings`` (``NAME.OPTION=VALUE``, options of that plugin only). ``NAME:ARGUMENT`` also sets the option
    the plugin names in its ``attack_argument`` (``textattack:deepwordbug``: the recipe)."""
    from fmkit.config import parse_setting

    name, _, argument = attack.partition(":")
    available = discover()
    if name not in available:
        harden = sorted(n for n, i in available.items() if i.cls is not None and i.stage == "harden")
        hint = difflib.get_close_matches(name, harden, n=1)
        raise FmkitError(f"--attack {attack}: unknown attack" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; attacks: {', '.join(harden) or 'none installed'}")
    info = lookup(name, available)
    if info.stage != "harden":
        raise FmkitError(f"--attack {attack}: not a harden plugin (it serves the {info.stage} stage)")
    options = {plugin: dict(values) for plugin, values in config.plugin_options.items()}
    if argument:  # NAME:ARGUMENT, e.g. textattack:deepwordbug, sets the option the plugin names
        option = getattr(info.cls, "attack_argument", None)
        if option is None:
            raise FmkitError(f"--attack {attack}: {name} takes nothing after ':'")
        options.setdefault(name, {})[option] = argument
    for item in settings:
        path, value = parse_setting(item)
        if len(path) != 2 or path[0] != name:
            raise FmkitError(f"--set {item}: eval takes options of the --attack plugin only, e.g. {name}.eval_steps=20")
        options.setdefault(name, {})[path[1]] = value
    plugins = config.plugins if name in config.plugins else [*config.plugins, name]
    return config.model_copy(update={"plugins": plugins, "plugin_options": options})


def read_record(run_dir: Path) -> tuple[RunConfig, Task, dict[str, Any]]:
    """The config, task and foundation record of a saved run (``config.json``), or a one-line error."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FmkitError(f"{run_dir}: not a run directory (no config.json)")
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        check_version(config_file, saved.get("fmkit_version"))
        return RunConfig.model_validate(saved["config"]), Task(**saved["task"]), dict(saved["foundation"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FmkitError(f"{config_file}: unreadable or from another fmkit version ({exc})") from None


def check_complete(model_dir: Path) -> None:
    """Every file a saved run's ``model/`` needs, or a one-line error naming the first one missing."""
    if not model_dir.is_dir():
        raise FmkitError(f"{model_dir}: missing: the run is incomplete (no saved model)")
    if not (model_dir / "tokenizer_config.json").is_file():
        raise FmkitError(f"{model_dir / 'tokenizer_config.json'}: missing: the run's tokenizer is incomplete")
    ensemble_file = model_dir / ENSEMBLE_FILE
    folders = [model_dir / MEMBERS_DIR / m["name"] for m in _layout(ensemble_file)["members"]] \
        if ensemble_file.is_file() else [model_dir]
    for folder in folders:
        configs = [name for name in WEIGHTS if (folder / name).is_file()]
        if not configs:
            raise FmkitError(f"{folder}: missing config.json (or adapter_config.json): not a saved model")
        for name in configs:
            if not any((folder / weights).is_file() for weights in WEIGHTS[name]):
                raise FmkitError(f"{folder / WEIGHTS[name][0]}: missing: the weights beside {name}")


def _layout(ensemble_file: Path) -> dict[str, Any]:
    try:
        return json.loads(ensemble_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FmkitError(f"{ensemble_file}: unreadable ({exc})") from None


class SavedBase:
    """The fuse stage's ModelBuilder for a saved run: ``build()`` returns the plain model saved under the
    run's adapters (``fmkit_adapt_base``), so reloading needs no foundation; only a run saved without one
    (prompt tuning) builds on the foundation, found when first needed (``locate_foundation``)."""

    def __init__(self, builder: Any, base_dir: Path, find_foundation: Any):
        self.builder, self.base_dir, self.find_foundation = builder, base_dir, find_foundation

    def build(self) -> Any:
        if (self.base_dir / "config.json").is_file():
            return self.builder.load(self.base_dir)
        self.find_foundation()
        return self.builder.build()

    def load(self, directory: Path) -> Any:
        return self.builder.load(directory)

    def __getattr__(self, name: str) -> Any:  # the builder's optional extras (member_metrics)
        return getattr(self.builder, name)


def locate_foundation(run_dir: Path, record: dict[str, Any], base_model: str | None) -> str:
    """Where the foundation of a saved run is on this machine: ``base_model`` (a local copy or a hub id) when
    given, else a backbone saved inside the run, the path it was trained from, or its hub id (cache, or the
    hub); else a one-line error saying how to point at a local copy."""
    from fmkit.hub import snapshot

    role = f"{run_dir}: its base model"
    if base_model:
        return str(Path(base_model)) if Path(base_model).is_dir() else snapshot(base_model, role=role)
    for path in (run_dir / record["path"], Path(record["path"])):
        if (path / "config.json").is_file():
            return str(path)
    if record.get("origin"):
        return snapshot(record["origin"], role=role)
    raise FmkitError(f"{role} {record['path']} is not on this machine: give a local copy "
                     "(--base-model PATH, or fmkit.load(run, base_model=PATH))")


def load(run_dir: Path, attack: str | None = None, settings: Sequence[str] = (),
         base_model: str | None = None) -> LoadedRun:
    """Rebuild a saved run's ensemble for eval/predict, from its config.json and model/ folder, through
    the stages of its plugins; with ``attack``, also that harden plugin's Hardener for robust evaluation.
    ``base_model``: a local copy (or hub id) of the foundation, for runs that reload on it."""
    run_dir = Path(run_dir)
    config, task, record = read_record(run_dir)
    model_dir = run_dir / MODEL_DIR
    check_complete(model_dir)
    if attack:
        config = with_attack(config, attack, settings)
    selection = select(config, check=False)
    from transformers import AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    foundation = Foundation(record["path"], tokenizer, record.get("source", ""), record.get("origin", ""))
    run = Run(config, task, None, None, foundation=foundation, hook=selection.manager.hook)
    attacking = attack_of(run, selection, attack.partition(":")[0]) if attack else {}  # its errors before any weights

    def find_foundation() -> None:
        foundation.path = locate_foundation(run_dir, record, base_model)

    fused = run.hook.fmkit_fuse(run=run, foundation=run.foundation)
    ensemble_file = model_dir / ENSEMBLE_FILE
    if ensemble_file.is_file():
        layout = _layout(ensemble_file)
        builder = SavedBase(fused, model_dir / BASE_DIR, find_foundation)
        specs = [MemberSpec(m["name"], m["seed"], m.get("indices"), m.get("weights")) for m in layout["members"]]
        members = load_members(run, builder, specs, model_dir / MEMBERS_DIR)
        ensemble = run.hook.fmkit_combine_load(run=run, members=members, state=layout["state"], directory=model_dir)
        if ensemble is None:
            raise FmkitError(f"{run_dir}: saved as an ensemble, but no selected plugin can reload it")
    else:
        builder = SavedBase(fused, model_dir, find_foundation)
        ensemble = SingleModel(load_members(run, builder, [MemberSpec("model", config.seed)], model_dir)[0])
    return LoadedRun(run, Scorer(run), ensemble, fused, attacking)


def load_members(run: Run, builder: Any, specs: list[MemberSpec], directory: Path) -> list[Member]:
    """The saved members: the first rebuilt by the adapt stage; when the adapt stage offers a shared
    backbone on it, every member's part loaded onto that one backbone (as in training), else each
    rebuilt whole. ``directory`` holds one folder per member (or is the only member's folder)."""
    from fmkit.train import accelerator_for

    device = accelerator_for(run.config.train.precision).device
    folders = [directory / spec.name for spec in specs] if len(specs) > 1 or specs[0].name != "model" else [directory]

    def loaded(load: Any, folder: Path) -> Any:
        try:
            return load(folder).to(device).eval()
        except FmkitError:
            raise
        except Exception as exc:  # a truncated or foreign weights file: name it, in one line
            raise FmkitError(unreadable_weights(folder, exc)) from None

    def adapt_load(folder: Path) -> Any:
        return run.hook.fmkit_adapt_load(run=run, builder=builder, directory=folder)

    first = loaded(adapt_load, folders[0])
    shared = run.hook.fmkit_adapt_share(run=run, model=first) if len(specs) > 1 else None
    models = ([loaded(lambda folder, name=spec.name: shared.load(name, folder), folder)
               for spec, folder in zip(specs, folders)] if shared is not None
              else [first, *(loaded(adapt_load, folder) for folder in folders[1:])])
    members = []
    for spec, model in zip(specs, models):
        trainable, total = count_parameters(model)
        members.append(Member(spec, model, trainable_params=trainable, total_params=total))
    return members


def attack_of(run: Run, selection: Selection, attack: str) -> dict[str, Any]:
    """The Hardener of the harden plugin ``attack`` alone (the run's own harden plugins are not asked)."""
    others = [p for p in selection.plugins if p.name != attack]
    return attacks(selection.manager.subset_hook_caller("fmkit_harden", remove_plugins=others)(run=run))
