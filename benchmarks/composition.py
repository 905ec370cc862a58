"""Does a combination of techniques beat each of its parts? Every named combination (adapt + harden +
combine) and each part alone (`adapter`, `adapter,pgd`, `adapter,bagging`, ...), at their defaults:
clean test F1, robust test F1 under the evaluation PGD (PGD-10, epsilon 0.05 per token, from the clean
input), wall time, peak memory and prediction speed, on the embedded default (WNUT-16) over several split
seeds and on a CoNLL-2003 slice of ``../shared/data``; the mean and spread over seeds, and a paired
bootstrap 95% interval of (combination - best part) on the test sentences of each seed.

Each entry is one `fmkit run` in a process of its own (its peak RSS is its own), then reloaded in that
process: the robust F1 comes from the run's own metrics when it trained with `pgd`, else from the reloaded
run attacked with `pgd`'s evaluation attack; prediction speed is the reloaded run predicting the test
split (the load not timed). Finished entries are kept in the output file, so the same command continues
an interrupted benchmark. Hold the shared lock: timings mean little beside another heavy job.

    python benchmarks/composition.py [--combinations adapter,pgd,bagging ...] [--seeds 42 43 44]
        [--conll-seeds 42] [--conll DIR] [--conll-train 1915] [--runs DIR] [--output PATH] [--report]

Prints the table (markdown) and writes benchmarks/results/composition.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "composition.json"
CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"
COMBINATIONS = ["adapter,pgd,bagging", "adapter,fgsm,soup", "full,pgd,voting"]
ATTACK = "pgd"


def parts(combination: str) -> list[str]:
    """The combination's parts that keep its adapt plugin: alone, with each other plugin, and all."""
    adapt, *others = combination.split(",")
    return [adapt, *(f"{adapt},{other}" for other in others), combination]


def conll_files(directory: Path, seed: int, train_size: int, work: Path) -> list[str]:
    """A seeded CoNLL-2003 slice: ``train_size`` training sentences; the valid file shuffled and cut into a
    240-sentence dev part (the run selects on it) and a 1,000-sentence test part that only scores."""
    def sentences(path: Path) -> list[str]:
        blocks = [b.strip("\n") for b in path.read_text(encoding="utf-8").split("\n\n")]
        return [b for b in blocks if b and not b.startswith("-DOCSTART-")]

    rng = random.Random(seed)
    train = rng.sample(sentences(directory / "train.txt"), train_size)
    valid = sentences(directory / "valid.txt")
    rng.shuffle(valid)
    files = []
    for name, blocks in (("train", train), ("dev", valid[:240]), ("test", valid[240:1240])):
        path = work / f"conll-{seed}-{name}.txt"
        path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        files += [f"--{name}", str(path)]
    return files


def child(run_dir: Path, plugins: str, seed: int, data_args: list[str]) -> dict:
    """In the entry's own process: train, note the peak memory, reload, attack, time the prediction."""
    from fmkit.artifacts import load
    from fmkit.assess import attack_targets, robust_metrics
    from fmkit.cli import main
    from fmkit.data import load_task_data

    command = ["run", "--plugins", plugins, "--seed", str(seed), "--runs-dir", str(run_dir.parent),
               "--name", run_dir.name, "--set", "train.progress=false", *data_args]
    if main(command) != 0:
        raise SystemExit(f"fmkit run failed for {plugins}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = json.loads((run_dir / "metrics.json").read_text())
    loaded = load(run_dir, ATTACK)
    test = load_task_data(loaded.run.config)[1].test
    started = time.perf_counter()
    clean = loaded.scorer.predict(loaded.ensemble.predict_proba, test, "test")
    speed = len(test) / (time.perf_counter() - started)
    robust = metrics.get("robust", {}).get(ATTACK, {}).get("test")
    attack_seconds = 0.0
    if robust is None:
        started = time.perf_counter()
        (target, model), = attack_targets(loaded.ensemble).items()  # the combination is one model to attack
        robust = robust_metrics(loaded.scorer, model, loaded.attacks, {"test": test}, {"test": clean})[ATTACK]["test"]
        attack_seconds = time.perf_counter() - started
    return {"peak_mib": round(peak_mib, 1), "predict_sentences_per_second": round(speed, 1),
            "attack_seconds": round(attack_seconds, 1), "robust_f1": robust["f1"],
            "attack_success_rate": robust["attack_success_rate"], "predictions": clean,
            "gold": [e.tags for e in test]}


def run_entry(dataset: str, seed: int, plugins: str, data_args: list[str], runs: Path) -> dict:
    run_dir = runs / f"{dataset}-{seed}-{plugins.replace(',', '_')}"
    if run_dir.exists():  # a run interrupted after it was saved: train it again, from the start
        import shutil

        shutil.rmtree(run_dir)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(run_dir), "--plugins", plugins,
                           "--seed", str(seed), "--", *data_args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{dataset} seed {seed} {plugins} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"dataset": dataset, "seed": seed, "entry": plugins, "test_f1": metrics["test"]["f1"],
            "dev_f1": metrics["dev"]["f1"], "run_seconds": metrics["seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1), **measured}


def paired_bootstrap(gold: list, a: list, b: list, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """F1(a) - F1(b) on the test sentences, and its 95% interval over resampled sentences (the same
    resample for both: the difference is paired)."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    def f1(rows: list[int], predicted: list) -> float:
        return f1_score([gold[i] for i in rows], [predicted[i] for i in rows], mode="strict", scheme=IOB2,
                        zero_division=0)

    everyone = list(range(len(gold)))
    rng = random.Random(seed)
    diffs = sorted(f1(rows, a) - f1(rows, b) for rows in
                   ([rng.randrange(len(gold)) for _ in everyone] for _ in range(resamples)))
    return f1(everyone, a) - f1(everyone, b), diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def report(results: list[dict], combinations: list[str]) -> str:
    """The markdown table: per data set and combination, each part and the combination over seeds, and
    the combination's difference from its best part with paired bootstrap intervals."""
    lines = []
    for dataset in sorted({r["dataset"] for r in results}):
        for combination in combinations:
            rows = {entry: [r for r in results if r["dataset"] == dataset and r["entry"] == entry]
                    for entry in parts(combination)}
            seeds = sorted(set.intersection(*({r["seed"] for r in found} for found in rows.values())))
            if not seeds:
                continue
            rows = {entry: [r for r in found if r["seed"] in seeds] for entry, found in rows.items()}
            lines += [f"### {dataset}: `{combination}` ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: "
                      f"{', '.join(map(str, seeds))})", "",
                      "| plugins | clean test F1 | robust F1 (PGD-10) | wall s | peak MiB | predict sent/s |",
                      "|---|---|---|---|---|---|"]
            for entry, found in rows.items():
                lines.append(f"| `{entry}` | {mean_sd([r['test_f1'] for r in found])} | "
                             f"{mean_sd([r['robust_f1'] for r in found])} | {statistics.mean(r['run_seconds'] for r in found):.0f} | "
                             f"{statistics.mean(r['peak_mib'] for r in found):.0f} | "
                             f"{statistics.mean(r['predict_sentences_per_second'] for r in found):.1f} |")
            parts_only = {e: f for e, f in rows.items() if e != combination}
            best = max(parts_only, key=lambda e: statistics.mean(r["test_f1"] for r in parts_only[e]))
            combined = rows[combination]
            intervals = []
            for r in combined:
                other = next(o for o in parts_only[best] if o["seed"] == r["seed"])
                diff, low, high = paired_bootstrap(r["gold"], r["predictions"], other["predictions"])
                intervals.append(f"seed {r['seed']}: {100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
                                 + (" (includes 0)" if low <= 0 <= high else ""))
            clean_part = rows[combination.split(",")[0]]
            gain = 100 * (statistics.mean(r["test_f1"] for r in combined) - statistics.mean(r["test_f1"] for r in rows[best]))
            robust_gain = 100 * (statistics.mean(r["robust_f1"] for r in combined)
                                 - statistics.mean(r["robust_f1"] for r in clean_part))
            lines += ["", f"- combination - best part (`{best}`), clean test F1 points: mean {gain:+.1f}; paired "
                      f"bootstrap 95%: {'; '.join(intervals)}",
                      f"- robust F1, combination - clean-trained `{combination.split(',')[0]}`: {robust_gain:+.1f} points", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--combinations", nargs="+", default=COMBINATIONS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44], help="WNUT-16 split seeds")
    parser.add_argument("--conll-seeds", nargs="*", type=int, default=[42], help="CoNLL-2003 slice seeds (none: skip)")
    parser.add_argument("--conll", type=Path, default=CONLL)
    parser.add_argument("--conll-train", type=int, default=1915, help="training sentences of the CoNLL slice")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/fmkit-composition-runs"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--model", help="--model of every run (default: the embedded MiniLM-L6)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every run (the benchmark is at the defaults: for smoke tests only)")
    parser.add_argument("--report", action="store_true", help="print the table of the results so far, train nothing")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plugins", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args, data_args = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args.child, args.plugins, args.seed, [a for a in data_args if a != "--"])))
        return
    results = json.loads(args.output.read_text())["results"] if args.output.is_file() else []
    if not args.report:
        args.runs.mkdir(parents=True, exist_ok=True)
        entries = list(dict.fromkeys(e for c in args.combinations for e in parts(c)))
        common = [*(["--model", args.model] if args.model else []), *(x for s in args.settings for x in ("--set", s))]
        plan = [("wnut", seed, common) for seed in args.seeds]
        if args.conll.is_dir():
            plan += [("conll", seed, [*conll_files(args.conll, seed, args.conll_train, args.runs), *common])
                     for seed in args.conll_seeds]
        for dataset, seed, data in plan:  # a seed at a time: the first seed's table is whole early
            for entry in entries:
                if any(r["dataset"] == dataset and r["seed"] == seed and r["entry"] == entry for r in results):
                    continue
                print(f"{dataset} seed {seed}: {entry} ...", file=sys.stderr, flush=True)
                results.append(run_entry(dataset, seed, entry, data, args.runs))
                shown = {k: v for k, v in results[-1].items() if k not in ("predictions", "gold")}
                print(json.dumps(shown), file=sys.stderr, flush=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps({"combinations": args.combinations, "attack": ATTACK,
                                                   "results": results}) + "\n")
    print(report(results, args.combinations))


if __name__ == "__main__":
    main()
