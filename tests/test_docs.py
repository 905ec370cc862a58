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
