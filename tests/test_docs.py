"""The docs that are read from the code stay in step with it, and the tutorial's plugin really is one."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import fmkit.hookspecs
from fmkit.registry import _contract_problem

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current(capsys):
    assert load_generator().main(["--check"]) == 0, capsys.readouterr().err


def test_a_changed_option_is_noticed():
    generate = load_generator()
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    drifted = guide.replace("passes over the training set", "passes over the data")
    assert drifted != guide
    assert generate.render(drifted, generate.TARGETS["user-guide.md"], "user-guide.md") == guide


def test_every_hookspec_signature_is_in_the_contract_doc():
    """Read from the source with ast, independently of docs/generate.py."""
    contract = (DOCS / "plugin-authors.md").read_text(encoding="utf-8")
    tree = ast.parse(Path(fmkit.hookspecs.__file__).read_text(encoding="utf-8"))
    hooks = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert len(hooks) >= 7
    for node in hooks:
        marker = ast.unparse(node.decorator_list[0])
        signature = f"def {node.name}({ast.unparse(node.args)}) -> {ast.unparse(node.returns)}"
        assert f"@{marker}\n{signature}\n" in contract, f"docs/plugin-authors.md lacks: {signature}"


def test_tutorial_plugin_meets_the_contract_and_trains_biases_only(tiny_model, monkeypatch):
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    source = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class BitFit" in block)
    monkeypatch.setitem(sys.modules, "fmkit_bitfit", type(sys)("fmkit_bitfit"))
    namespace = sys.modules["fmkit_bitfit"].__dict__
    exec(compile(source, "docs/tutorial.md", "exec"), namespace)
    bitfit = namespace["BitFit"]
    assert _contract_problem("bitfit", bitfit) is None
    assert 'bitfit = "fmkit_bitfit:BitFit"' in text

    from fmkit.model import TextModelBuilder
    from fmkit.types import Foundation, Task

    builder = TextModelBuilder(Foundation(str(tiny_model), None), Task("ner", ["O", "B-PER", "I-PER"]))
    model = bitfit(bitfit.Options()).fmkit_adapt(run=None, model=builder.build())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "bert.encoder.layer.0.attention.self.query.bias"} <= trainable


def test_tutorial_harden_technique_is_one_file_on_the_public_api_and_trains(tiny_model, ner_files, tmp_path, monkeypatch):
    """Section 6's R3F, exec'd from the page: it imports only fmkit.plugin, and `fmkit run --plugins r3f`
    trains with its penalty, reports the model under its noise and reloads for `fmkit eval --attack r3f`."""
    import json

    import torch

    from fmkit.cli import main
    from fmkit.testing import FAST_TRAIN, installed_plugin

    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    source = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class R3F" in block)
    imports = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert {m for m in imports if m.startswith("fmkit")} == {"fmkit.plugin"}
    monkeypatch.setitem(sys.modules, "fmkit_r3f", type(sys)("fmkit_r3f"))
    namespace = sys.modules["fmkit_r3f"].__dict__
    exec(compile(source, "docs/tutorial.md", "exec"), namespace)
    r3f = namespace["R3F"]
    assert _contract_problem("r3f", r3f) is None

    hardener = r3f(r3f.Options(sigma=0.5)).fmkit_harden(run=None)  # the penalty is there, and positive
    from fmkit.model import TextModelBuilder
    from fmkit.train import forward_logits, task_loss
    from fmkit.types import Foundation, Task
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = TextModelBuilder(Foundation(str(tiny_model), tokenizer), Task("ner", ["O", "B-PER", "I-PER"])).build()
    batch = dict(tokenizer(["alice went to rome", "bob"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.zeros_like(batch["input_ids"])
    model.eval()  # no dropout: the clean loss is the same in both calls
    torch.manual_seed(0)
    assert float(hardener.train_step(model, batch, lambda loss: None)) > float(task_loss(forward_logits(model, batch), batch))

    sets = [x for s in (*FAST_TRAIN, "r3f.sigma=0.02") for x in ("--set", s)]
    with installed_plugin("r3f", r3f, distribution="fmkit-r3f"):
        assert main(["run", "--plugins", "r3f", "--model", str(tiny_model), "--train", str(ner_files["train"]),
                     "--dev", str(ner_files["dev"]), "--test", str(ner_files["test"]), "--runs-dir", str(tmp_path),
                     "--name", "r3f", *sets]) == 0
        metrics = json.loads((tmp_path / "r3f" / "metrics.json").read_text())
        assert metrics["test"]["f1"] >= 0.9 and 0 <= metrics["robust"]["r3f"]["test"]["f1"] <= 1
        assert main(["eval", str(tmp_path / "r3f"), "--data", str(ner_files["test"]), "--attack", "r3f"]) == 0
