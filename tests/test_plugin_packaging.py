"""Plugins as real pip packages. Small fixture distributions (a broken one, two that clash on a name, and
one written by `fmkit new-plugin`) are pip-installed into a temporary --target folder put on PYTHONPATH,
so the environment other tests share is never changed, and `fmkit` is run on them in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmkit.cli import main

CLASH_PLUGIN = '''\
from pydantic import BaseModel, ConfigDict

import fmkit


class Plugin:
    """A valid harden plugin whose name another package uses too."""

    name, stage = "fixture_clash", "harden"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options):
        self.options = options

    @fmkit.hookimpl
    def fmkit_harden(self, run):
        return None
'''


def write_distribution(root: Path, dist: str, version: str, entry_point: str, code: str) -> Path:
    """A one-module distribution ``dist`` whose entry point ``NAME = module:Plugin`` is in the fmkit group."""
    module = dist.replace("-", "_")
    folder = root / dist
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(code)
    (folder / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "{version}"\n\n'
        f'[project.entry-points.fmkit]\n{entry_point} = "{module}:Plugin"\n\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n')
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dists")
    scaffolded = root / "fmkit-pkgtest-adapt"
    assert main(["new-plugin", "pkgtest_adapt", "--directory", str(scaffolded)]) == 0
    packages = [
        scaffolded,
        write_distribution(root, "fixture-broken", "0.1", "fixture_broken", "import fmkit_dependency_not_installed\n"),
        write_distribution(root, "fixture-clash-a", "0.1", "fixture_clash", CLASH_PLUGIN),
        write_distribution(root, "fixture-clash-b", "0.2", "fixture_clash", CLASH_PLUGIN),
    ]
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), *map(str, packages)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    env.pop("FMKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    return {"env": env, "cwd": root, "scaffolded": scaffolded}


def fmkit(installed: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmkit", *args], capture_output=True, text=True,
                          cwd=installed["cwd"], env={**installed["env"], **env})


def section(listing: str, title: str) -> str:
    """The lines of ``fmkit plugins`` output under the heading ``title``."""
    lines = listing.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return "\n".join(lines[start:end])


def test_installed_packages_are_listed_and_problems_reported(installed):
    out = fmkit(installed, "plugins")
    assert out.returncode == 0, out.stderr
    assert "pkgtest_adapt" in section(out.stdout, "adapt") and "fmkit-pkgtest-adapt 0.1.0" in out.stdout
    assert "full" in section(out.stdout, "adapt")  # the built-ins are still there
    failed = section(out.stdout, "failed to load")
    assert "fixture_broken" in failed and "No module named 'fmkit_dependency_not_installed'" in failed
    clash = next(line for line in failed.splitlines() if "fixture_clash" in line)
    assert "fixture-clash-a 0.1" in clash and "fixture-clash-b 0.2" in clash  # both distributions named
    assert fmkit(installed, "plugins", "show", "pkgtest_adapt").stdout.count("pkgtest_adapt.frozen_layers") == 1


@pytest.mark.parametrize(("plugin", "message"), [
    ("fixture_broken", "plugin 'fixture_broken' from fixture-broken 0.1 cannot be used: ModuleNotFoundError"),
    ("fixture_clash", "plugin 'fixture_clash' from fixture-clash-"),
])
def test_selecting_a_broken_or_clashing_plugin_is_a_one_line_error(installed, plugin, message):
    out = fmkit(installed, "run", "--plugins", plugin)
    assert out.returncode == 2 and out.stderr.startswith("fmkit: error: " + message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if plugin == "fixture_clash":
        assert "fixture-clash-a 0.1" in out.stderr and "fixture-clash-b 0.2" in out.stderr and "name clash" in out.stderr


@pytest.mark.parametrize("how", ["env", "before", "after"])
def test_autoload_off_loads_built_ins_only(installed, how):
    args = {"env": ["plugins"], "before": ["--no-plugin-autoload", "plugins"], "after": ["plugins", "--no-plugin-autoload"]}
    out = fmkit(installed, *args[how], **({"FMKIT_DISABLE_PLUGIN_AUTOLOAD": "1"} if how == "env" else {}))
    assert out.returncode == 0, out.stderr
    assert "full" in section(out.stdout, "adapt") and "hf" in section(out.stdout, "pretrain")
    assert "fixture" not in out.stdout and "pkgtest" not in out.stdout and "failed to load" not in out.stdout


def test_new_plugin_package_passes_its_own_test(installed):
    scaffolded = installed["scaffolded"]
    for written in ("pyproject.toml", "README.md", "fmkit_pkgtest_adapt/__init__.py", "tests/test_pkgtest_adapt.py"):
        assert (scaffolded / written).is_file(), written
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(scaffolded / "tests")],
                         capture_output=True, text=True, cwd=scaffolded, env=installed["env"])
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize(("args", "message"), [
    (["new-plugin", "Mix-Out"], "'Mix-Out' is not a valid plugin name"),
    (["new-plugin", "mixout", "--stage", "finetune"], "no stage 'finetune'; the stages are pretrain, data, fuse, adapt"),
    (["new-plugin", "full"], "a plugin named 'full' is already installed"),
    (["new-plugin", "mixout", "--directory", "{existing}"], "already exists; choose another folder"),
])
def test_new_plugin_bad_input(tmp_path, capsys, args, message):
    args = [a.format(existing=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmkit: error: new-plugin: ") and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
