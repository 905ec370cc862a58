"""The run directory's contents: saving a finished run (models, config, metrics, report, log) and
reloading a saved one for ``fmkit eval`` and ``fmkit predict``, through the same stages as a run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fmkit import rundir
from fmkit.assess import Scorer
from fmkit.checkpoint import unreadable_weights
from fmkit.config import RunConfig
from fmkit.defaults import SingleModel
from fmkit.errors import FmkitError
from fmkit.model import count_parameters, quiet_transformers
from fmkit.registry import Selection, discover, lookup, select
from fmkit.stages import attacks
from fmkit.types import Foundation, Member, MemberSpec, Run, Task

MODEL_DIR = "model"
ENSEMBLE_FILE = "ensemble.json"


def save(run: Run, selection: Selection, ensemble: Any, metrics: dict, report: str, target: Path) -> None:
    """Write model(s), config.json, metrics.json, report.txt and log.jsonl into the run directory."""
    import fmkit

    directory = run.directory
    model_dir = directory / MODEL_DIR
    with quiet_transformers():
        save_models(ensemble, model_dir)
        run.foundation.tokenizer.save_pretrained(model_dir)
    rundir.write_json(directory / "config.json", {
        "fmkit_version": fmkit.__version__,
        "run": target.name,
        "config": run.config.model_dump(mode="json"),
        "plugins": selection.describe(),
        "foundation": {"path": _portable(run.foundation.path, directory), "source": run.foundation.source},
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
    """A saved run, ready to predict: its Run context, a Scorer for its task, the ensemble and the
    ModelBuilder of its fuse stage (what builds its task models)."""

    run: Run
    scorer: Scorer
    ensemble: Any
    builder: Any
    attacks: dict[str, Any] = field(default_factory=dict)  # name -> Hardener, for ``fmkit eval --attack``


def with_attack(config: RunConfig, attack: str, settings: Sequence[str]) -> RunConfig:
    """The saved config with the harden plugin ``attack`` selected too, its options updated by
    ``settings`` (``NAME.OPTION=VALUE``, options of that plugin only)."""
    from fmkit.config import parse_setting

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


def read_record(run_dir: Path) -> tuple[RunConfig, Task, dict[str, Any]]:
    """The config, task and foundation record of a saved run (``config.json``), or a one-line error."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FmkitError(f"{run_dir}: not a run directory (no config.json)")
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        return RunConfig.model_validate(saved["config"]), Task(**saved["task"]), dict(saved["foundation"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FmkitError(f"{config_file}: unreadable or from another fmkit version ({exc})") from None


def load(run_dir: Path, attack: str | None = None, settings: Sequence[str] = ()) -> LoadedRun:
    """Rebuild a saved run's ensemble for eval/predict, from its config.json and model/ folder, through
    the stages of its plugins; with ``attack``, also that harden plugin's Hardener for robust evaluation."""
    run_dir = Path(run_dir)
    config, task, record = read_record(run_dir)
    if attack:
        config = with_attack(config, attack, settings)
    selection = select(config)
    model_dir = run_dir / MODEL_DIR
    from transformers import AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    path = record["path"]
    if (run_dir / path).is_dir():  # a backbone saved inside the run (e.g. by mlm)
        path = str(run_dir / path)
    run = Run(config, task, None, None, foundation=Foundation(path, tokenizer, record.get("source", "")),
              hook=selection.manager.hook)
    builder = run.hook.fmkit_fuse(run=run, foundation=run.foundation)
    ensemble_file = model_dir / ENSEMBLE_FILE
    if ensemble_file.is_file():
        layout = json.loads(ensemble_file.read_text(encoding="utf-8"))
        specs = [MemberSpec(m["name"], m["seed"], m.get("indices"), m.get("weights")) for m in layout["members"]]
        members = load_members(run, builder, specs, model_dir / "members")
        ensemble = run.hook.fmkit_combine_load(run=run, members=members, state=layout["state"], directory=model_dir)
        if ensemble is None:
            raise FmkitError(f"{run_dir}: saved as an ensemble, but no selected plugin can reload it")
    else:
        ensemble = SingleModel(load_members(run, builder, [MemberSpec("model", config.seed)], model_dir)[0])
    return LoadedRun(run, Scorer(run), ensemble, builder, attack_of(run, selection, attack) if attack else {})


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
