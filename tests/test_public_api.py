"""Plugins build against one public module, ``fmkit.plugin``, as a third party must: the built-in families
and contrib import nothing else of fmkit, no family imports another, and what the module exports is
documented (docs/plugin-authors.md is generated from it)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted(p for folder in (ROOT / "plugins", ROOT / "contrib")
                        for p in folder.rglob("*.py") if "tests" not in p.relative_to(folder).parts
                        and p.name != "benchmark.py")


def fmkit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of an ``fmkit``/``fmkit_*`` module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0].startswith("fmkit")]
    return found


def family(path: Path) -> str:
    return path.relative_to(ROOT).parts[1] if path.relative_to(ROOT).parts[0] == "plugins" else path.parent.name


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_code_imports_only_the_public_api_and_its_own_family(path):
    own = family(path)
    for line, module in fmkit_imports(path):
        top = module.split(".")[0]
        if top == "fmkit":
            assert module == "fmkit.plugin", f"{path.relative_to(ROOT)}:{line} imports {module}; use fmkit.plugin"
        else:
            assert top == own, f"{path.relative_to(ROOT)}:{line} imports {module}, another family's module"


def test_the_sources_checked_are_the_plugin_families():
    families = {family(p) for p in PLUGIN_SOURCES}
    assert {"fmkit_pretrain", "fmkit_adapt", "fmkit_harden", "fmkit_combine", "fmkit_fuse", "fmkit_distill"} <= families


def test_the_check_catches_a_core_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from fmkit.train import task_loss\n    import fmkit.plugin\n")
    assert fmkit_imports(sneaky) == [(2, "fmkit.train"), (3, "fmkit.plugin")]


def test_every_export_is_documented_and_nothing_heavy_is_imported():
    import subprocess
    import sys

    from fmkit import plugin

    for name in plugin.__all__:
        value = getattr(plugin, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"fmkit.plugin.{name} has no docstring"
    code = "import sys, fmkit.plugin; print([m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
