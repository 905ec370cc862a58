"""Does a distilled adapter keep an ensemble's gain at single-model cost? Three runs on the embedded default
(MiniLM-L6, WNUT-16), same seed, data and epochs: one LoRA adapter; a bagging ensemble of LoRA adapters
(the teacher); LoRA adapters distilled from it, one per (alpha, temperature, out_of_bag, transfer) of the grid
given, of which the one best on dev is the student reported, overall and per transfer setting (test F1 never
chooses). With transfer true, a student also learns from a transfer set (distill.transfer): the training
sentences beyond --limit, words only, which the teacher labels; the labelled runs never see them. Writes
benchmarks/results/distill.json.

    pip install ./contrib/fmkit-distill
    python contrib/fmkit-distill/benchmark.py --limit 600 --epochs 5 [--alphas 0.5 --temperatures 2 \
        --out-of-bag false --transfer false true --single-teacher]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from fmkit.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "distill.json"


def transfer_set(args: argparse.Namespace, directory: Path) -> tuple[Path, int]:
    """The training sentences beyond --limit (same data, split and seed as the runs), written words only, one a
    line, to ``directory``: unlabelled text from the labelled runs' own distribution. Their number too."""
    from fmkit.config import RunConfig
    from fmkit.data import load_task_data

    files = {split: args.data / f"{split}.conll" for split in ("train", "dev", "test")} if args.data else {}
    rest = load_task_data(RunConfig(seed=args.seed, data=files))[1].train[args.limit:]
    if not rest:
        raise SystemExit(f"--transfer true: no training sentences beyond --limit {args.limit}")
    path = directory / "transfer.txt"
    path.write_text("".join(" ".join(s.words) + "\n" for s in rest), encoding="utf-8")
    return path, len(rest)


def run(runs: Path, name: str, plugins: str, common: list[str], *settings: str) -> dict:
    started = time.perf_counter()
    sets = [x for s in (*common, *settings) for x in ("--set", s)]
    assert main(["run", "--plugins", plugins, "--runs-dir", str(runs), "--name", name, *sets]) == 0
    metrics = json.loads((runs / name / "metrics.json").read_text())
    members = metrics["members"]
    log = [json.loads(line) for line in (runs / name / "log.jsonl").read_text().splitlines()]
    transfer = next(({k: e[k] for k in ("added", "skipped")} for e in log if e["event"] == "distill_transfer"), None)
    return {
        "plugins": plugins, "settings": list(settings), "test": metrics["test"], "dev": metrics["dev"],
        "members": len(members), "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(sum(m["train_seconds"] for m in members.values()), 1),
        "trainable_params_per_member": next(iter(members.values()))["trainable_params"],
        "member_test_f1": {k: round(m["test"]["f1"], 4) for k, m in members.items()},
        **({"transfer_examples": transfer} if transfer else {}),
    }


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=600, help="training sentences (data.limit); dev/test stay whole")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size of every run (the teacher's "
                                                                   "members too, whose combine default is 8)")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", help="another foundation (a quick check of this script on a tiny model)")
    parser.add_argument("--data", type=Path, help="a folder with train/dev/test.conll instead of the default data")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5], help="distill.alpha values to try")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0], help="distill.temperature values")
    parser.add_argument("--out-of-bag", nargs="+", choices=["true", "false"], default=["false"],
                        help="distill.out_of_bag values")
    parser.add_argument("--transfer", nargs="+", choices=["true", "false"], default=["false"],
                        help="students without (false) and/or with (true) the training sentences beyond --limit as "
                             "an unlabelled transfer set (distill.transfer)")
    parser.add_argument("--single-teacher", action="store_true",
                        help="the control: students of the single adapter too (first alpha and temperature, each "
                             "transfer setting), telling what the ensemble teaches from what the transfer set does")
    args = parser.parse_args()
    common = [f"data.limit={args.limit}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
              "train.progress=false", f"seed={args.seed}"]
    common += [f"model={args.model}"] if args.model else []
    common += [f"data.{split}={args.data / split}.conll" for split in ("train", "dev", "test")] if args.data else []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        transfer, transfer_size = transfer_set(args, runs) if "true" in args.transfer else (None, 0)
        single = run(runs, "single", "adapter", common)
        teacher = run(runs, "teacher", "adapter,bagging", common, f"bagging.members={args.members}",
                      "bagging.sample=1.0")  # Breiman's full-size bootstraps, not the headline's budget

        def distil(name: str, teacher_run: str, alpha: float, temperature: float, out_of_bag: str, with_transfer: str) -> dict:
            """A LoRA student of ``teacher_run`` (teacher or single), with the transfer set when asked."""
            return run(runs, name, "distill", common, f"distill.teacher={runs / teacher_run}", "distill.student=adapter",
                       f"distill.alpha={alpha}", f"distill.temperature={temperature}", f"distill.out_of_bag={out_of_bag}",
                       *([f"distill.transfer={transfer}"] if with_transfer == "true" else []))

        students = {f"alpha={a:g},T={t:g},out_of_bag={o},transfer={x}": distil(f"student-{a:g}-{t:g}-{o}-{x}", "teacher",
                                                                               a, t, o, x)
                    for x in args.transfer for o in args.out_of_bag for a in args.alphas for t in args.temperatures}
        controls = {f"teacher=single,transfer={x}": distil(f"control-{x}", "single", args.alphas[0], args.temperatures[0],
                                                           "false", x)
                    for x in args.transfer} if args.single_teacher else {}
    gain = teacher["test"]["f1"] - single["test"]["f1"]

    def best(names: list[str]) -> dict:
        """The student best on dev among ``names``, and the share of the teacher's test gain it kept."""
        name = max(names, key=lambda k: students[k]["dev"]["f1"])
        kept = (students[name]["test"]["f1"] - single["test"]["f1"]) / gain if gain > 0 else None
        return {"student": name, "dev_f1": round(students[name]["dev"]["f1"], 4),
                "test_f1": round(students[name]["test"]["f1"], 4),
                "share_of_gain_kept": None if kept is None else round(kept, 3)}

    overall = best(list(students))
    chosen, student = overall["student"], students[overall["student"]]
    by_transfer = {x: best([k for k in students if k.endswith(f",transfer={x}")]) for x in args.transfer}
    result = {
        "command": f"python contrib/fmkit-distill/benchmark.py --limit {args.limit} --epochs {args.epochs} "
                   f"--batch-size {args.batch_size} "
                   f"--members {args.members} --seed {args.seed} --alphas {' '.join(map(str, args.alphas))} "
                   f"--temperatures {' '.join(map(str, args.temperatures))} --out-of-bag {' '.join(args.out_of_bag)} "
                   f"--transfer {' '.join(args.transfer)}" + (" --single-teacher" if args.single_teacher else "")
                   + (f" --model {args.model}" if args.model else "") + (f" --data {args.data}" if args.data else ""),
        "data": str(args.data) if args.data else "WNUT-16 (embedded default), 80/10/10 split, training set "
                                                   "limited to --limit sentences",
        "transfer_set": None if transfer is None else {  # added: less those the plugin skipped as duplicates
            "source": "the training sentences beyond --limit, words only", "sentences": transfer_size,
            **next(r["transfer_examples"] for r in students.values() if "transfer_examples" in r)},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "runs": {"single": single, "teacher": teacher, "student": student},
        "student_chosen_on_dev": chosen,
        "student_chosen_on_dev_by_transfer": by_transfer,
        "students": {k: {"dev_f1": round(r["dev"]["f1"], 4), "test_f1": round(r["test"]["f1"], 4)}
                     for k, r in students.items()},
        "students_of_the_single_adapter": {k: {"dev_f1": round(r["dev"]["f1"], 4), "test_f1": round(r["test"]["f1"], 4)}
                                           for k, r in controls.items()},
        "ensemble_gain_test_f1": round(gain, 4),
        "share_of_gain_kept": overall["share_of_gain_kept"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    for name, r in students.items():
        marks = ["chosen on dev"] if name == chosen else []
        marks += [f"chosen on dev among transfer={x}" for x, c in by_transfer.items() if c["student"] == name]
        print(f"student {name:<47} dev F1 {r['dev']['f1']:.4f}  test F1 {r['test']['f1']:.4f}"
              + ("  <- " + ", ".join(marks) if marks else ""))
    for name, r in controls.items():
        print(f"control {name:<47} dev F1 {r['dev']['f1']:.4f}  test F1 {r['test']['f1']:.4f}")
    for name, r in result["runs"].items():
        print(f"{name:8} test F1 {r['test']['f1']:.4f}  members {r['members']}  train {r['train_seconds']:.0f}s")


if __name__ == "__main__":
    main_benchmark()
