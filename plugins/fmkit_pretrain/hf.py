"""``hf``: the default pretrain plugin, which loads the foundation with transformers."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import DEFAULT_MODEL, FmkitError, Foundation, Run, hookimpl, quiet_transformers


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


def download(hub_id: str, revision: str | None) -> str:
    """The local snapshot of a hub model: from the cache, else from the hub when it is reachable."""
    import socket

    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, revision=revision, local_files_only=True)
    except Exception:
        pass
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise FmkitError(f"--model {hub_id}: not a local directory or installed package, not in the hub cache, "
                         "and the hub is unreachable") from None
    try:
        return snapshot_download(hub_id, revision=revision)
    except Exception as exc:
        raise FmkitError(f"--model {hub_id}: download failed ({type(exc).__name__}: {exc})") from None


class HF:
    """Load the foundation with transformers: a local directory, an installed model package, or a hub id."""

    name, stage = "hf", "pretrain"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        revision: str | None = Field(None, description="hub revision (branch, tag or commit) for hub ids")

    def __init__(self, options: Options):
        self.options = options

    def check(self, config: Any) -> None:
        resolve_model(config.model)

    @hookimpl
    def fmkit_pretrain(self, run: Run) -> Foundation:
        source = run.config.model
        location, local = resolve_model(source)
        if local:
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local model never needs the hub
        else:
            location = download(source, self.options.revision)
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=run.config.trust_remote_code)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FmkitError(f"--model {source}: cannot load it ({first})") from None
        if not getattr(tokenizer, "is_fast", False) and run.task.kind == "ner":
            raise FmkitError(f"--model {source}: NER needs a fast (Rust) tokenizer for word alignment")
        run.say(f"model: {source} ({location})")
        return Foundation(path=location, tokenizer=tokenizer, source=source)
