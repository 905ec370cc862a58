"""Composition is order-free and said before it is done: every ordering of ``--plugins`` gives the same
run, plugins that bring different defaults for an option the user did not set are a one-line error,
and ``--dry-run`` prints the plan without loading weights."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from pydantic import BaseModel

from fmkit.cli import main
from fmkit.plugin import hookimpl
from fmkit.testing import FAST_TRAIN, installed_plugin, reproducible_metrics

QUICK = [*FAST_TRAIN, "train.epochs=2"]
COMBINATIONS = {  # three-plugin combinations across stages, each with the settings that keep it quick
    "adapter,pgd,bagging": ["bagging.members=2", "bagging.trunk=0.5", "train.epochs=4", "pgd.epsilon=0.01"],
    "full,fgsm,freelb": ["fgsm.epsilon=0.01", "freelb.epsilon=0.01", "fgsm.random_init=true"],  # two hardeners
    "probe,freelb,voting": ["voting.members=2", "freelb.epsilon=0.01", "train.lr=5e-2"],
}


def run_metrics(plugins: str, settings: list[str], files: dict, model, runs, name: str) -> dict:
    sets = [x for s in (*QUICK, *settings) for x in ("--set", s)]
    assert main(["run", "--plugins", plugins, "--model", str(model), "--train", str(files["train"]),
                 "--dev", str(files["dev"]), "--test", str(files["test"]), "--runs-dir", str(runs), "--name", name,
                 *sets]) == 0
    return reproducible_metrics(runs / name)


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_every_ordering_of_the_plugins_gives_the_same_run(combination, tiny_model, ner_files, tmp_path):
    orderings = list(itertools.permutations(combination.split(",")))
    results = [run_metrics(",".join(order), COMBINATIONS[combination], ner_files, tiny_model, tmp_path, f"o{i}")
               for i, order in enumerate(orderings)]
    assert len(orderings) == 6 and all(r == results[0] for r in results[1:]), combination
    assert "robust" in results[0] or any("robust" in m for m in results[0]["members"].values())


class SlowRate:
    """A data plugin that leaves the rows alone but brings its own default learning rate."""

    name, stage = "slow_rate", "data"
    train_defaults = {"lr": 1e-5}

    class Options(BaseModel):
        pass

    def __init__(self, options):
        self.options = options

    @hookimpl
    def fmkit_data(self, run, train):
        return None


def test_plugins_that_disagree_on_a_default_fail_naming_both_unless_the_user_chose(tmp_path, capsys):
    args = ["run", "--plugins", "slow_rate,adapter", "--runs-dir", str(tmp_path), "--dry-run"]
    with installed_plugin("slow_rate", SlowRate):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("fmkit: error: plugins 'adapter' and 'slow_rate' bring different defaults for "
                              "train.lr (0.002 and 1e-05)") and err.count("\n") == 1, err
        assert main([*args, "--set", "train.lr=1e-4"]) == 0
        assert "- train.lr = 0.0001 (you)" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_dry_run_prints_the_plan_and_loads_no_weights(tiny_model, ner_files, tmp_path):
    code = ("import sys; from fmkit.cli import main; code = main(sys.argv[1:]); "
            "print('LOADED', [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]); sys.exit(code)")
    args = ["run", "--plugins", "pgd,bagging,adapter", "--model", str(tiny_model), "--train", str(ner_files["train"]),
            "--dev", str(ner_files["dev"]), "--runs-dir", str(tmp_path / "runs"), "--dry-run",
            "--set", "bagging.members=3", "--set", "train.epochs=4"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "LOADED []" in out, "nothing heavy imported: no weights loaded"
    assert not (tmp_path / "runs").exists()
    for line in ("- adapt: adapter", "- harden: pgd", "- combine: bagging", "- data: none",
                 "- train.lr = 0.002 (plugin adapter)", "- train.epochs = 4 (you)",
                 "- bagging: trunk: epochs 1-2 of 4 on all 240 training rows",
                 "- bagging: m3: continues the trunk, epochs 3-4",
                 "- pgd: every training batch: 3 forward passes"):
        assert line in out, (line, out)
    assert "train:\n  epochs: 4\n" in out and "bagging:\n    members: 3" in out, "the resolved configuration"
