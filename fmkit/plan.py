"""``fmkit run --dry-run``: what a run will do, said before it does it and before any weights load: the
resolved configuration, the plugin serving each stage, where every ``train.*`` value comes from, the
training schedule in optimizer steps, and what each plugin says it will do (``fmkit_plan``)."""

from __future__ import annotations

import math

from fmkit.config import RunConfig
from fmkit.data import load_task_data
from fmkit.registry import STAGES, Selection, train_default_sources, with_train_defaults
from fmkit.types import Run

FALLBACKS = {"data": "none: the training rows as read", "fuse": "core: a text-only task model",
             "harden": "none: clean training", "combine": "core: one member trained on all the data"}


def plan(config: RunConfig, selection: Selection) -> str:
    """The dry run's report, as text."""
    import yaml

    sources = train_default_sources(config, selection)
    config = with_train_defaults(config, selection)
    task, data = load_task_data(config)
    run = Run(config, task, data, None, hook=selection.manager.hook)
    lines = ["# fmkit run --dry-run: nothing is trained or written", "", "## configuration", "",
             yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), "", "## stages", ""]
    for stage in STAGES:
        serving = [p.name for p in selection.by_stage(stage)]
        lines.append(f"- {stage}: {', '.join(serving) if serving else FALLBACKS[stage]}")
    lines += ["", "## training options", ""]
    lines += [f"- train.{key} = {value!r} ({who})" for key, (value, who) in sources.items() if who != "default"]
    lines.append("- every other train.* option: fmkit's default")
    steps = math.ceil(len(data.train) / config.train.batch_size)
    lines += ["", "## data and schedule", "", f"- {data.description}",
              f"- one member on all {len(data.train):,} training examples: {config.train.epochs} epochs x about "
              f"{steps:,} optimizer steps of {config.train.batch_size} (long sentences windowed may add a few) = "
              f"about {config.train.epochs * steps:,} steps"]
    said = [(impl.plugin_name, impl.function(run=run)) for impl in sorted(
        run.hook.fmkit_plan.get_hookimpls(), key=lambda impl: impl.plugin_name)]
    if said:
        lines += ["", "## what the plugins will do", ""]
        lines += [f"- {name}: {line}" for name, told in said for line in told]
    return "\n".join(lines)
