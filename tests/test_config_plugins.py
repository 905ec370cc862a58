import subprocess
import sys

import pytest
from pydantic import BaseModel, ConfigDict, Field

import fmkit
from fmkit.config import build_config, read_config_file
from fmkit.errors import FmkitError
from fmkit.registry import PluginInfo, discover, select

INSTALLED = {"hf", "full", "fake_pgd"}


def test_precedence_defaults_then_file_then_flags_then_set(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("seed: 1\ntrain:\n  epochs: 3\n  lr: 0.01\nmodel: from-file\n")
    config = build_config(read_config_file(yaml_file), {"model": "from-flag", "seed": None},
                          ["train.lr=0.5", "data.split=[0.5, 0.25, 0.25]"], INSTALLED)
    assert config.seed == 1  # file beats default; a flag left out (None) does not override
    assert config.train.epochs == 3 and config.train.batch_size == 16  # file, then default
    assert config.model == "from-flag"  # flag beats file
    assert config.train.lr == 0.5  # --set beats everything
    assert config.data.split == (0.5, 0.25, 0.25)


def test_toml_config_and_plugin_sections(tmp_path):
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('plugins = ["fake_pgd"]\n[train]\nepochs = 2\n[fake_pgd]\nsteps = 4\n')
    config = build_config(read_config_file(toml_file), {}, ["fake_pgd.epsilon=0.5"], INSTALLED)
    assert config.plugins == ["fake_pgd"]
    assert config.plugin_options == {"fake_pgd": {"steps": 4, "epsilon": 0.5}}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["train.epoch=3"], "unknown option 'train.epoch' \\(did you mean 'train.epochs'\\?\\)"),
        (["trian.epochs=3"], "unknown option 'trian' \\(did you mean 'train'\\?\\)"),
        (["train.epochs=many"], "option train.epochs: Input should be a valid integer"),
        (["train.lr=-1"], "option train.lr: Input should be greater than 0"),
        (["epochs"], "expected KEY=VALUE"),
        (["task=speech"], "option task: Input should be 'ner', 'classify' or 'multimodal'"),
    ],
)
def test_bad_options_are_one_line_errors(settings, message):
    with pytest.raises(FmkitError, match=message):
        build_config(None, {}, settings, INSTALLED)


def test_bad_config_file(tmp_path):
    broken = tmp_path / "c.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(FmkitError, match="c.yaml: not valid YAML"):
        read_config_file(broken)
    with pytest.raises(FmkitError, match="does not exist"):
        read_config_file(tmp_path / "missing.toml")


class _Base:
    def __init__(self, options):
        self.options = options


class FakeLoader(_Base):
    """A second loader."""
    name, stage = "other_loader", "pretrain"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @fmkit.hookimpl
    def fmkit_pretrain(self, run):
        return "loaded"


class FakeContinuation(_Base):
    """Wraps the loader, like masked-LM pretraining."""
    name, stage = "fake_mlm", "pretrain"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @fmkit.hookimpl(wrapper=True)
    def fmkit_pretrain(self, run):
        foundation = yield
        return f"{foundation}+continued"


class FakePGD(_Base):
    """An attack."""
    name, stage = "fake_pgd", "harden"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: int = Field(3, ge=1, description="ascent steps")
        epsilon: float = Field(1.0, gt=0, description="radius")

    @fmkit.hookimpl
    def fmkit_harden(self, run):
        return ("pgd", self.options.steps)


def fake_available():
    real = discover()
    found = {name: real[name] for name in ("hf", "full")}
    for cls in (FakeLoader, FakeContinuation, FakePGD):
        found[cls.name] = PluginInfo(cls.name, f"tests:{cls.__name__}", "fake-dist", "1.0", cls)
    found["broken"] = PluginInfo("broken", "broken_pkg:Plugin", "broken-dist", "0.1", None, "ImportError: no module named x")
    return found


def config_with(plugins, settings=()):
    return build_config(None, {"plugins": plugins}, list(settings), set(fake_available()))


def test_selection_adds_stage_defaults_and_validates_options():
    selection = select(config_with("fake_pgd", ["fake_pgd.steps=7"]), fake_available())
    assert [p.name for p in selection.plugins] == ["fake_pgd", "full", "hf"], "in the order of their names"
    assert selection.manager.hook.fmkit_harden(run=None) == [("pgd", 7)]
    assert selection.describe()["fake_pgd"] == {"stage": "harden", "package": "fake-dist", "version": "1.0",
                                                "options": {"steps": 7, "epsilon": 1.0}}


def test_wrapper_continues_the_default_loader():
    selection = select(config_with("fake_mlm"), fake_available())
    assert "hf" in [p.name for p in selection.plugins]
    selection.manager.unregister(name="hf")
    selection.manager.register(FakeLoader(FakeLoader.Options()), name="other_loader")
    assert selection.manager.hook.fmkit_pretrain(run=None) == "loaded+continued"


@pytest.mark.parametrize(
    ("plugins", "settings", "message"),
    [
        ("fake_pdg", [], r"unknown plugin 'fake_pdg' \(did you mean 'fake_pgd'\?\); installed: broken, fake_mlm"),
        ("hf,other_loader", [], "plugins 'hf' and 'other_loader' both serve the pretrain stage, which takes one"),
        ("broken", [], "plugin 'broken' from broken-dist 0.1 cannot be used: ImportError: no module named x"),
        ("fake_pgd", ["fake_pgd.steps=0"], "option fake_pgd.steps: Input should be greater than or equal to 1"),
        ("fake_pgd", ["fake_pgd.stepz=2"], "unknown option 'fake_pgd.stepz'"),
        ("", ["fake_pgd.steps=2"], "options given for plugin 'fake_pgd', which is not selected"),
        ("fake_pgd,fake_pgd", [], "names a plugin twice"),
    ],
)
def test_selection_errors(plugins, settings, message):
    with pytest.raises(FmkitError, match=message):
        select(config_with(plugins, settings), fake_available())


def test_a_broken_entry_point_is_reported_not_fatal():
    from fmkit.testing import installed_plugin

    with installed_plugin("broken", None, ImportError("No module named 'broken_pkg'"), distribution="broken-dist"):
        found = discover()
    assert found["broken"].cls is None and "No module named 'broken_pkg'" in found["broken"].error
    assert found["hf"].cls is not None and found["full"].cls is not None
    assert "broken" not in discover(), "the entry point is gone with the block"


def test_importing_fmkit_and_listing_plugins_imports_no_torch():
    code = ("import sys, fmkit.cli; fmkit.cli.main(['plugins']); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "pretrain" in out and "hf" in out and "full" in out


def test_plugins_bring_training_defaults_the_user_did_not_set():
    from fmkit.registry import with_train_defaults

    def effective(*settings: str):
        config = build_config({}, {"plugins": ["adapter", "stacking"]}, list(settings), set(discover()))
        return with_train_defaults(config, select(config)).train

    train = effective()
    assert (train.lr, train.epochs, train.batch_size) == (2e-3, 2, 8)  # adapter's LoRA rate; short members
    train = effective("train.batch_size=32", "train.lr=1e-3")
    assert (train.lr, train.epochs, train.batch_size) == (1e-3, 2, 32)  # what the user set wins


@pytest.mark.parametrize("written, precision", [("no", "no"), ("bf16", "bf16"), ("auto", "auto")])
def test_precision_reads_as_written_on_the_command_line(written, precision):
    """YAML reads a bare ``no`` as false; ``--set train.precision=no`` is still Accelerate's ``no``."""
    config = build_config(None, {}, [f"train.precision={written}"], {"hf", "full", "single"})
    assert config.train.precision == precision
