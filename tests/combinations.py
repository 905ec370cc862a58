"""One cell of the tox matrix (tox.ini): FMKIT_COMBINATION names plugins joined by "-", e.g.
"adapter-pgd-bagging" ("none" and "single" stand for an empty stage). The combination runs end to end on
the tiny test model: trained, scored clean and under its attacks, saved, and reloaded by `fmkit eval` to
the same score. With a fuse plugin the task is the synthetic two-modality one. A combination that is
known not to work fails with its one-line error (INCOMPATIBLE; tox's `incompatible` environment).

The main suite does not collect this file (its name does not start with test_). By hand:
    FMKIT_COMBINATION=adapter-pgd-bagging python -m pytest tests/combinations.py -k trains
    python -m pytest tests/combinations.py -k incompatible
"""

from __future__ import annotations

import json
import os

import pytest

from fmkit.cli import main
from fmkit.testing import FAST_TRAIN

COMBINATION = os.environ.get("FMKIT_COMBINATION", "")
EMPTY = {"none", "single"}
FUSE = {"concat", "gated", "attention"}
ENSEMBLES = {"bagging", "boosting", "stacking", "soup", "voting"}
# Settings that make each plugin quick and learn on the tiny model (few parameters take larger steps).
SMALL = ({name: [f"{name}.members=2"] for name in ENSEMBLES} | {name: [f"{name}.dim=32"] for name in FUSE}
         | {"adapter": ["train.lr=2e-2"], "probe": ["train.lr=5e-2"]}
         | {name: [f"{name}.epsilon=0.01"] for name in ("fgsm", "pgd", "freelb")})  # tiny embeddings have norm ~0.1
MIN_SCORE = {"probe": 0.3}  # a frozen random backbone is a weak feature extractor; trained ones reach 0.6+

# plugins (and settings) -> the start of the expected error, for combinations that cannot work.
INCOMPATIBLE: dict[tuple[str, ...], str] = {
    ("adapter", "probe"): "fmkit: error: plugins 'adapter' and 'probe' both serve the adapt stage, which takes one",
    ("concat", "task=ner"): "fmkit: error: plugin 'concat' fuses modalities: use it with --task multimodal",
    ("adapter", "soup", "adapter.method=prompt"): "fmkit: error: plugin 'soup' requires members whose training folds "
                                                  "into plain model weights ('merge'), which none of adapter "
                                                  "(adapter.method=prompt), hf provides",
}


def plugins_of(cell: str) -> list[str]:
    assert cell, "set FMKIT_COMBINATION, e.g. adapter-pgd-bagging (see tox.ini)"
    return [name for name in cell.split("-") if name not in EMPTY]


def run_args(plugins: list[str], files: dict, model, runs, *settings: str) -> list[str]:
    task = "multimodal" if FUSE & set(plugins) else "ner"
    sets = [*FAST_TRAIN, "train.epochs=5", *(s for p in plugins for s in SMALL.get(p, [])), *settings]
    return ["run", "--task", task, "--plugins", ",".join(plugins), "--model", str(model), "--train", str(files["train"]),
            "--dev", str(files["dev"]), "--test", str(files["test"]), "--runs-dir", str(runs), "--name", "cell",
            *(x for s in sets for x in ("--set", s))]


def cell_files(cell: str, ner_files: dict, directory) -> dict:
    """The cell's data: the tiny NER files, or the synthetic two-modality task when it fuses."""
    if not FUSE & set(plugins_of(cell)):
        return ner_files
    from fmkit_fuse.synthetic import write

    return write(directory, {"train": 160, "dev": 40, "test": 40}, seed=0, features=2)


def test_combination_trains_scores_saves_and_reloads(ner_files, tiny_model, tmp_path, capsys):
    check_cell(COMBINATION, cell_files(COMBINATION, ner_files, tmp_path / "data"), tiny_model, tmp_path, capsys)


def check_cell(cell: str, files: dict, tiny_model, tmp_path, capsys) -> None:
    """The cell trains, is scored clean and under its attacks, saves, and reloads to the same score."""
    plugins = plugins_of(cell)
    assert main(run_args(plugins, files, tiny_model, tmp_path)) == 0
    run = tmp_path / "cell"
    metrics = json.loads((run / "metrics.json").read_text())
    primary = metrics["primary_metric"]
    recorded = json.loads((run / "config.json").read_text())["plugins"]
    attacks = [p for p in plugins if recorded[p]["stage"] == "harden"]
    if not attacks:  # attacked training of a LoRA adapter or a probe on the tiny model need not learn in 5 epochs
        assert metrics["test"][primary] >= min([0.6, *(MIN_SCORE.get(p, 0.6) for p in plugins)]), metrics["test"]
    assert set(plugins) <= set(recorded), recorded
    members = metrics["members"]
    expected = {2, 1} if "boosting" in plugins else {2} if ENSEMBLES & set(plugins) else {1}
    assert len(members) in expected, "boosting stops early only when a member makes no weighted error"
    # the one model the run predicts with is attacked (a single member, a soup, a soft vote of adapters on
    # one backbone); a combination without a gradient (stacking, members with their own embeddings): each member
    combined = len(members) == 1 or "soup" in plugins or ("adapter" in plugins and "stacking" not in plugins)
    for attack in attacks:
        if combined:
            assert attack in metrics["robust"] and "test" in metrics["robust"][attack], metrics.get("robust")
        else:
            assert "robust" not in metrics and all(attack in m["robust"] for m in members.values()), members
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(files["test"]), "--json"]) == 0
    reloaded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reloaded[primary] == pytest.approx(metrics["test"][primary], abs=1e-9), "the reloaded run scores the same"


@pytest.mark.parametrize("case", list(INCOMPATIBLE), ids="+".join)
def test_known_incompatible_combinations_fail_clearly(case, ner_files, tiny_model, tmp_path, capsys):
    plugins = [p for p in case if "=" not in p]
    settings = [s for s in case if "=" in s]
    assert main(run_args(plugins, ner_files, tiny_model, tmp_path, *settings)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fmkit: error:")]
    assert len(errors) == 1 and errors[0].startswith(INCOMPATIBLE[case]), errors


def test_a_broken_plugin_package_is_reported_and_harmless(capsys):
    """tox's `broken` environment installs tests/fixtures/broken-plugin, whose module cannot import."""
    from fmkit.registry import discover

    broken = discover().get("broken_fixture")
    assert broken is not None, "tests/fixtures/broken-plugin is not installed in this environment"
    assert broken.cls is None and "fmkit_dependency_that_is_not_installed" in broken.error
    assert main(["plugins"]) == 0
    assert "broken_fixture" in capsys.readouterr().out.split("failed to load")[1]
    assert main(["run", "--plugins", "broken_fixture"]) == 2
    assert capsys.readouterr().err.startswith("fmkit: error: plugin 'broken_fixture' from fmkit-broken-fixture 0.1.0 "
                                              "cannot be used: ModuleNotFoundError")
