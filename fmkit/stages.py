"""The stages whose answers the core combines by a rule of its own, rather than taking the first:
data plugins chained, hardeners side by side, both in the order of the plugins' names (never the order of
``--plugins``). Everything else is one call of ``run.hook``."""

from __future__ import annotations

from typing import Any

from fmkit.errors import FmkitError
from fmkit.types import Hardener, Run, TaskData


def transform_data(run: Run) -> TaskData:
    """The training rows after every data plugin, each given the previous one's rows, in the order of
    the plugins' names (so never in the order of ``--plugins``); dev and test as they were read."""
    data = run.data
    train = data.train
    for impl in sorted(run.hook.fmkit_data.get_hookimpls(), key=lambda impl: impl.plugin_name):
        result = impl.function(run=run, train=train)
        if result is not None:
            if not all(type(example) is type(data.train[0]) for example in result):
                raise FmkitError(f"plugin {impl.plugin_name!r} returned training rows of another kind than the "
                                 f"task's ({type(data.train[0]).__name__})")
            train = tuple(result)
    if train is data.train:
        return data
    return TaskData(train, data.dev, data.test, f"{data.description}; {len(train)} training rows after the data stage")


def hardeners(run: Run) -> list[Hardener]:
    """The harden stage's Hardeners in the order of their plugins' names (the registry registers plugins in
    that order; pluggy answers last-registered first)."""
    return list(reversed(run.hook.fmkit_harden(run=run)))


def attacks(hardeners: list[Any]) -> dict[str, Any]:
    """The Hardeners that attack for robust evaluation, by name: those with an ``attack`` of batches or an
    ``attack_examples`` that rewrites examples (neither: a training loss only)."""
    return {getattr(h, "name", type(h).__name__): h for h in hardeners
            if getattr(h, "attack", None) is not None or getattr(h, "attack_examples", None) is not None}
