"""fmkit: a foundation model plus the techniques practitioners stack on it, as plugins.

Users train, load, predict and export runs with ``fmkit.run``, ``fmkit.load`` and ``fmkit.export``
(docs/api.md); plugin authors import from ``fmkit.plugin``, the one public module for them
(docs/plugin-authors.md). Importing fmkit stays cheap: torch, transformers and peft load only when a run
needs them.
"""

import pluggy

from fmkit.errors import FmkitError

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("fmkit")
"""Marks a plugin method as the implementation of a stage hook (see ``fmkit.hookspecs``)."""

from fmkit.api import Classified, Entity, Predictor, RunResult, Tagged, export, load, run  # noqa: E402

__all__ = ["FmkitError", "hookimpl", "__version__", "run", "load", "export", "Predictor", "Entity", "Tagged",
           "Classified", "RunResult"]
