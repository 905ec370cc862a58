"""How fast an ensemble predicts against one model, whole and as a cascade (the first member alone where
it is sure, ``<combine>.cascade``): per trained ensemble run, dev and test F1 (or accuracy), the share of
examples the first member settles alone, and examples per second, for the first member alone (one model
of the same size: the baseline), the whole vote and the cascade at each threshold; with a paired
bootstrap 95% interval of (cascade - whole vote) on the test split. Choose the threshold on dev.

    flock /tmp/fmkit-measure.lock python benchmarks/cascade.py RUN [RUN ...] [--thresholds 0.99 0.9 0.8]
        [--repeats 3] [--members K] [--output benchmarks/results/cascade.json]

The runs are ones a plain ``fmkit run --plugins ...,bagging|voting|boosting`` saved; each is reloaded and
timed in this process, the load not timed; a timing is the best of ``--repeats`` passes over the split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from composition import paired_bootstrap  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cascade.json"


def measure(run_dir: Path, thresholds: list[float], repeats: int, members: int | None) -> dict:
    from fmkit.artifacts import load
    from fmkit.data import load_task_data
    from fmkit.evaluate import scores, softmax_predictor

    loaded = load(run_dir)
    vote, task = loaded.ensemble, loaded.run.task
    if members:  # a smaller ensemble: the run's first members, their weights renormalised
        vote.members, weights = vote.members[:members], vote.weights[:members]
        vote.weights = [w / sum(weights) for w in weights]
    data = load_task_data(loaded.run.config)[1]
    metric = "f1" if task.kind == "ner" else "accuracy"
    ways = [("one model (the first member)", None, softmax_predictor(vote.members[0].model)),
            ("whole vote", None, None), *((f"cascade {t}", t, None) for t in thresholds)]
    rows, predictions = [], {}
    for name, threshold, predict in ways:
        row = {"way": name, "cascade": threshold}
        for split, examples in (("dev", data.dev), ("test", data.test)):
            vote.cascade = threshold
            best = float("inf")
            for _ in range(repeats):
                vote.cascaded = [0, 0]
                started = time.perf_counter()
                predicted = loaded.scorer.predict(predict or vote.predict_proba, examples, split)
                best = min(best, time.perf_counter() - started)
            gold = [e.tags if task.kind == "ner" else e.label for e in examples]
            row[f"{split}_{metric}"] = round(scores(task, gold, predicted)[metric], 4)
            row[f"{split}_per_second"] = round(len(examples) / best, 1)
            if threshold is not None:
                row[f"{split}_settled_by_first"] = round(vote.cascaded[0] / max(1, vote.cascaded[1]), 3)
            if split == "test":
                predictions[name] = (gold, predicted)
        rows.append(row)
    one = rows[0]["test_per_second"]
    for row in rows:
        row["test_speed_vs_one_model"] = round(row["test_per_second"] / one, 2)
        if row["cascade"] is not None and task.kind == "ner":
            gold, predicted = predictions[row["way"]]
            diff, low, high = paired_bootstrap(gold, predicted, predictions["whole vote"][1])
            row["test_minus_whole_vote"] = [round(100 * x, 2) for x in (diff, low, high)]
    return {"run": str(run_dir), "plugins": loaded.run.config.plugins, "members": len(vote.members),
            "metric": metric, "rows": rows}


def table(result: dict) -> str:
    metric = result["metric"]
    lines = [f"### {result['run']} ({','.join(result['plugins'])}, {result['members']} members)", "",
             f"| way | dev {metric} | test {metric} | settled by the first member (test) | test examples/s | "
             "vs one model | test - whole vote [95%] |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        interval = r.get("test_minus_whole_vote")
        lines.append(f"| {r['way']} | {r[f'dev_{metric}']:.4f} | {r[f'test_{metric}']:.4f} | "
                     f"{r.get('test_settled_by_first', '')} | {r['test_per_second']:.1f} | "
                     f"{r['test_speed_vs_one_model']:.2f}x | "
                     + (f"{interval[0]:+.2f} [{interval[1]:+.2f}, {interval[2]:+.2f}]" if interval else "") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.99, 0.95, 0.9, 0.8, 0.7])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--members", type=int, help="use only each run's first K members")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    results = []
    for run_dir in args.runs:
        results.append(measure(run_dir, args.thresholds, args.repeats, args.members))
        print(table(results[-1]) + "\n", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "torch_threads":
                                       torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
