"""``fmkit new-plugin NAME``: write a ready pip package for a new plugin, so that adding a technique
starts from a working, tested package (entry point, Options model, the stage's hook, a test, a README)
instead of from a blank page. The hook bodies are small real techniques to replace with your own."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from fmkit.errors import FmkitError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["fmkit>=$fmkit_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The one line that makes this package an fmkit plugin: `fmkit plugins` lists it once installed.
[project.entry-points.fmkit]
$name = "$module:$cls"

[tool.setuptools]
packages = ["$module"]
"""

README = """\
# $dist

An [fmkit](https://pypi.org/project/fmkit/) plugin for the **$stage** stage: $summary

```bash
pip install -e .                  # registers the `$name` entry point
fmkit plugins show $name          # its options, defaults and docs
fmkit run --plugins $name         # use it (add --set $name.OPTION=VALUE to change an option)
python -m pytest                  # a real run on a tiny random model, in seconds
```

The hook `$hook` in `$module/__init__.py` is the stage's contract: see fmkit's
`docs/plugin-authors.md` for its exact signature and what it must return.
"""

MODULE_HEAD = '''\
"""$summary"""

from __future__ import annotations

${stdlib}${typing}
from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import ${imports}
'''

PLUGIN_HEAD = '''

class $cls:
    """$summary"""

    name, stage = "$name", "$stage"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

$options
    def __init__(self, options: Options):
        self.options = options
'''

# Per stage: summary, imports, helpers before the class, Options fields, hook methods, extra test settings.
STAGE_CODE: dict[str, dict[str, str]] = {
    "pretrain": {
        "summary": "Add domain words to the tokenizer before the task stages (a continuation of the loader).",
        "stdlib": "from pathlib import Path\n",
        "imports": "Foundation, Run, hookimpl",
        "helpers": "",
        "options": '''\
        new_tokens: list[str] = Field([], description="words to add to the vocabulary as whole tokens; "
                                      "their embeddings start random and are learned with the task")
''',
        "hooks": '''
    @hookimpl(wrapper=True)  # a continuation: the loader (``hf``) answers first
    def fmkit_pretrain(self, run: Run) -> Any:
        foundation = yield
        if not self.options.new_tokens:
            return foundation
        from transformers import AutoModel

        added = foundation.tokenizer.add_tokens(self.options.new_tokens)
        backbone = AutoModel.from_pretrained(foundation.path)
        backbone.resize_token_embeddings(len(foundation.tokenizer))
        target = Path(run.directory) / "$name"  # saved with the run, so eval/predict find it
        backbone.save_pretrained(target)
        foundation.tokenizer.save_pretrained(target)
        run.say(f"$name: {added} new tokens")
        return Foundation(path=str(target), tokenizer=foundation.tokenizer, source=foundation.source)
''',
        "settings": ', "$name.new_tokens=[zurich]"',
    },
    "data": {
        "summary": "Case augmentation: lower-cased copies of training examples join them (noisy text drops capitals).",
        "stdlib": "import random\nfrom collections.abc import Sequence\nfrom dataclasses import replace\n",
        "imports": "Example, Run, hookimpl",
        "helpers": "",
        "options": '''\
        share: float = Field(0.5, ge=0, le=1, description="share of the training examples that get a lower-cased "
                             "copy (drawn with the run's seed)")
''',
        "hooks": '''
    @hookimpl
    def fmkit_data(self, run: Run, train: Sequence[Example]) -> list[Example]:
        rng = random.Random(run.seed)
        chosen = [e for e in train if rng.random() < self.options.share]
        copies = [replace(e, words=[w.lower() for w in e.words]) if hasattr(e, "words")
                  else replace(e, text=e.text.lower()) for e in chosen]
        run.say(f"$name: {len(copies)} lower-cased copies join the {len(train)} training examples")
        return [*train, *copies]
''',
        "settings": "",
    },
    "fuse": {
        "summary": "The text-only task model, with dropout set by an option (replace with your fusion encoder).",
        "stdlib": "",
        "imports": "Foundation, ModelBuilder, Run, TextModelBuilder, hookimpl",
        "helpers": '''

class DropoutBuilder(TextModelBuilder):
    """The core's text model with another hidden dropout (a ModelBuilder: ``build()`` and ``load()``)."""

    def __init__(self, foundation: Foundation, run: Run, dropout: float):
        super().__init__(foundation, run.task, run.config.trust_remote_code)
        self.dropout = dropout

    def build(self) -> Any:
        from torch import nn

        model = super().build()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.dropout
        return model
''',
        "options": '''\
        dropout: float = Field(0.2, ge=0, lt=1, description="dropout probability of every dropout layer")
''',
        "hooks": '''
    @hookimpl
    def fmkit_fuse(self, run: Run, foundation: Foundation) -> ModelBuilder:
        return DropoutBuilder(foundation, run, self.options.dropout)
''',
        "settings": ', "$name.dropout=0.1"',
    },
    "adapt": {
        "summary": "Fine-tune with the bottom encoder layers frozen (a cheap regulariser for small data).",
        "stdlib": "from pathlib import Path\n",
        "imports": "ModelBuilder, Run, hookimpl",
        "helpers": "",
        "options": '''\
        frozen_layers: int = Field(2, ge=0, description="encoder layers, counted from the input, that keep "
                                   "their pretrained weights")
''',
        "hooks": '''
    @hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        from torch import nn

        model.requires_grad_(True)
        stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        layers = max(stacks, key=len) if stacks else []  # the transformer blocks, whatever the architecture
        for layer in list(layers)[: self.options.frozen_layers]:
            layer.requires_grad_(False)
        return model

    @hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        return builder.load(directory)  # the whole model was saved: nothing to rebuild
''',
        "settings": "",
    },
    "harden": {
        "summary": "Gaussian noise on the input embeddings: train on noisy batches, evaluate under a fresh draw.",
        "stdlib": "",
        "imports": "Run, hookimpl, model_inputs, task_loss",
        "helpers": '''

class Noise:
    """A Hardener: ``train_step`` replaces the clean loss, ``attack`` gives logits for robust evaluation."""

    def __init__(self, name: str, sigma: float):
        self.name, self.sigma = name, sigma

    def _noisy_logits(self, model: Any, batch: dict) -> Any:
        import torch

        embeds = model.get_input_embeddings()(batch["input_ids"])
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "input_ids"}
        noise = torch.randn_like(embeds) * self.sigma * embeds.detach().std()  # relative: scale-free
        return model(inputs_embeds=embeds + noise, **inputs).logits

    def train_step(self, model: Any, batch: dict, backward: Any) -> Any:
        loss = task_loss(self._noisy_logits(model, batch), batch)
        backward(loss)
        return loss.detach()

    def attack(self, model: Any, batch: dict) -> Any:
        return self._noisy_logits(model, batch)
''',
        "options": '''\
        sigma: float = Field(0.5, gt=0, description="standard deviation of the noise on each embedding coordinate, "
                             "relative to the embeddings' own standard deviation")
''',
        "hooks": '''
    @hookimpl
    def fmkit_harden(self, run: Run) -> Noise:
        return Noise(self.name, self.options.sigma)
''',
        "settings": "",
    },
    "combine": {
        "summary": "A seed ensemble: members differ only in their seed; their probabilities are averaged.",
        "stdlib": "",
        "imports": "Member, MemberSpec, Run, hookimpl, softmax_predictor",
        "helpers": '''

class Average:
    """An Ensemble: its members, ``predict_proba`` (the mean of theirs) and ``state()`` to save."""

    def __init__(self, members: list[Member]):
        self.members = members
        self._predictors = [softmax_predictor(m.model) for m in members]

    def predict_proba(self, batch: dict) -> Any:
        return sum(predict(batch) for predict in self._predictors) / len(self._predictors)

    def state(self) -> dict[str, Any]:
        return {"rule": "mean"}  # non-empty: the run is saved (and reloaded) as an ensemble
''',
        "options": '''\
        members: int = Field(2, ge=1, description="number of members, seeded run.seed, run.seed + 1, ...")
''',
        "hooks": '''
    @hookimpl
    def fmkit_combine(self, run: Run, fit: Any) -> Average:
        return Average([fit(MemberSpec(f"seed{i}", seed=run.seed + i)) for i in range(self.options.members)])

    @hookimpl
    def fmkit_combine_load(self, run: Run, members: list[Member], state: dict[str, Any]) -> Average:
        return Average(members)
''',
        "settings": "",
    },
}

TEST = '''\
"""The plugin is installed, and a run with it on a tiny random model trains, saves and reloads."""

import json

from fmkit.cli import main
from fmkit.testing import FAST_TRAIN, make_tiny_model, write_ner_files

SETTINGS = [*FAST_TRAIN, "train.epochs=4"$settings]


def test_installed_and_valid(capsys):
    assert main(["plugins", "show", "$name"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("$name ($stage stage)")


def test_run_train_save_eval(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_ner_files(tmp_path / "data", train=120, dev=30, test=30)
    sets = [x for s in SETTINGS for x in ("--set", s)]
    code = main(["run", "--plugins", "$name", "--model", str(model), "--train", str(data["train"]),
                 "--dev", str(data["dev"]), "--test", str(data["test"]), "--runs-dir", str(tmp_path / "runs"),
                 "--name", "tiny", *sets])
    assert code == 0
    run = tmp_path / "runs" / "tiny"
    assert "$name" in json.loads((run / "config.json").read_text())["plugins"]
    assert json.loads((run / "metrics.json").read_text())["test"]["f1"] > 0.5  # the task is learnable
    assert main(["eval", str(run), "--data", str(data["test"])]) == 0  # reloads through the plugin
'''


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part)


def check_name(name: str, installed: set[str]) -> None:
    if not NAME_PATTERN.match(name):
        raise FmkitError(f"new-plugin: {name!r} is not a valid plugin name: use lower-case letters, digits and "
                         "underscores, starting with a letter (it names the entry point and the module fmkit_NAME)")
    if name in installed:
        raise FmkitError(f"new-plugin: a plugin named {name!r} is already installed; choose another name "
                         "(two packages with one name clash)")


def render(name: str, stage: str) -> dict[str, str]:
    """The package's files, path -> text, for plugin ``name`` serving ``stage``."""
    import fmkit
    from fmkit.registry import STAGES

    if stage not in STAGES:
        raise FmkitError(f"new-plugin: no stage {stage!r}; the stages are {', '.join(STAGES)}")
    code = STAGE_CODE[stage]
    values = {"name": name, "stage": stage, "cls": class_name(name), "module": f"fmkit_{name}",
              "dist": f"fmkit-{name.replace('_', '-')}", "summary": code["summary"], "hook": STAGES[stage],
              "fmkit_version": fmkit.__version__, "options": code["options"]}
    values["settings"] = Template(code["settings"]).substitute(values)
    body = (Template(code["helpers"]).substitute(values)
            + Template(PLUGIN_HEAD).substitute(values) + Template(code["hooks"]).substitute(values))
    typing = "from typing import Any\n" if "Any" in body else ""
    module = Template(MODULE_HEAD).substitute(values, stdlib=code["stdlib"], typing=typing, imports=code["imports"]) + body
    return {
        "pyproject.toml": Template(PYPROJECT).substitute(values),
        "README.md": Template(README).substitute(values),
        f"{values['module']}/__init__.py": module,
        f"tests/test_{name}.py": Template(TEST).substitute(values),
    }


def new_plugin(name: str, stage: str, directory: Path | None, installed: set[str]) -> Path:
    """Write the package for plugin ``name`` into ``directory`` (default ./fmkit-NAME), which must not exist."""
    check_name(name, installed)
    files = render(name, stage)
    target = Path(directory) if directory is not None else Path(f"fmkit-{name.replace('_', '-')}")
    if target.exists():
        raise FmkitError(f"new-plugin: {target} already exists; choose another folder with --directory")
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target
