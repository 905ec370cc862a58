"""The run directory: built under a temporary name, each file written atomically, then swapped in.

An interrupted run leaves ``runs/NAME`` untouched: its ``.NAME.partial`` folder is deleted, or kept
for ``fmkit run --resume runs/NAME`` once it holds a checkpoint (``fmkit.checkpoint``). An existing
run is replaced only with ``--overwrite``, and only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fmkit.errors import FmkitError


def run_name(name: str | None) -> str:
    return name or time.strftime("run-%Y%m%d-%H%M%S")


def check_target(runs_dir: Path, name: str, overwrite: bool) -> Path:
    """The final run path; refuse an existing one without ``overwrite`` (before any work)."""
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise FmkitError(f"--name {name!r}: a run name is one plain folder name")
    target = Path(runs_dir) / name
    if target.exists() and not overwrite:
        raise FmkitError(f"run directory {target} already exists (pass --overwrite to replace it, or another --name)")
    if runs_dir.exists() and not runs_dir.is_dir():
        raise FmkitError(f"--runs-dir {runs_dir} is not a directory")
    return target


def partial_path(target: Path) -> Path:
    """Where the run ``target`` is built (and where an interrupted one waits for ``--resume``)."""
    return target.parent / f".{target.name}.partial"


def start(target: Path, reuse: bool = False) -> Path:
    """Create the temporary directory the run writes into; ``reuse``: continue in the one an
    interrupted run left (``fmkit run --resume``)."""
    partial = partial_path(target)
    if reuse and partial.is_dir():
        return partial
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as exc:
        raise FmkitError(f"cannot create the run directory under {target.parent}: {exc.strerror}") from None
    return partial


def finish(partial: Path, target: Path) -> None:
    """Swap the completed run into place; an old run of the same name goes only after that."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(partial, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
