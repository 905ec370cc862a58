"""fmkit: a foundation model plus the techniques practitioners stack on it, as plugins.

The public API for plugin authors is what this module exports: ``hookimpl`` to mark stage hooks,
``FmkitError`` for user-facing errors, and the types the stages exchange (``fmkit.types``).
Importing fmkit stays cheap: torch, transformers and peft load only when a run needs them.
"""

import pluggy

from fmkit.errors import FmkitError

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("fmkit")
"""Marks a plugin method as the implementation of a stage hook (see ``fmkit.hookspecs``)."""

__all__ = ["FmkitError", "hookimpl", "__version__"]
