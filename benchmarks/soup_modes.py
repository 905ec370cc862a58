"""Which soup should be the default: greedy by dev F1, greedy by dev log-likelihood, or uniform?

Decided on data that chose nothing. A greedy soup (Wortsman et al. 2022) ranks the members and keeps each one that does not lower the
dev score. On a small dev split that comparison is slanted towards one member: a member's dev score
is the best of its epochs, and the first member is the best of the members, both picked on that same
dev split, while the soup's score was picked by nothing. So dev cannot referee the soups, and test
must not. This script uses a third split: CoNLL-2003 (``../shared/data``), a
training sample of ``--train-size`` sentences, and the valid file shuffled and cut in two, a dev
part that the run selects on (epochs, the greedy soup) and a held-out part that only scores.

For each seed: one `fmkit run --plugins adapter,soup` with the plugin's defaults (greedy, 5 members,
a trunk of half the epochs) and benchmarks/ensembles.py's schedule (3 epochs, batches of 8), then,
from the same saved members, the greedy soup by the other criterion (``soup.greedy_by``: dev F1 or
dev log-likelihood) and the uniform soup. Members and soups are all scored on the held-out part.

    python benchmarks/soup_modes.py [--seeds 42 43] [--train-size 1915] [--dev-size 240] [--heldout-size 1000]
        [--epochs 3] [--greedy-by loss|metric] [--conll DIR] [--output PATH]

Prints a table and writes benchmarks/results/soup-modes.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"  # train.txt, valid.txt
RESULTS = Path(__file__).parent / "results" / "soup-modes.json"


def sentences(path: Path) -> list[str]:
    """The file's sentences as CoNLL text blocks (document separators dropped)."""
    blocks = [b.strip("\n") for b in path.read_text(encoding="utf-8").split("\n\n")]
    return [b for b in blocks if b and not b.startswith("-DOCSTART-")]


def write(path: Path, blocks: list[str]) -> str:
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return str(path)


def one_seed(seed: int, args: argparse.Namespace, work: Path) -> dict:
    from fmkit.cli import main
    from fmkit.data import load_task_data
    from fmkit.artifacts import load
    from fmkit_combine.soup import SoupModel, choose, uniform

    rng = random.Random(seed)
    train = rng.sample(sentences(args.conll / "train.txt"), args.train_size)
    valid = sentences(args.conll / "valid.txt")
    rng.shuffle(valid)
    files = {name: write(work / f"{name}-{seed}.conll", blocks)
             for name, blocks in (("train", train), ("dev", valid[:args.dev_size]),
                                  ("heldout", valid[args.dev_size:args.dev_size + args.heldout_size]))}
    name = f"soup-{seed}"
    command = ["run", "--plugins", "adapter,soup", "--runs-dir", str(work), "--name", name, "--seed", str(seed),
               "--train", files["train"], "--dev", files["dev"], "--test", files["heldout"],
               "--set", f"train.epochs={args.epochs}", "--set", "train.batch_size=8", "--set", "train.progress=false",
               "--set", f"soup.greedy_by={args.greedy_by}"]
    if main(command) != 0:
        raise SystemExit(f"fmkit run failed for seed {seed}")
    metrics = json.loads((work / name / "metrics.json").read_text())
    loaded = load(work / name)
    data = load_task_data(loaded.run.config)[1]
    members, count, by = loaded.ensemble.members, len(loaded.ensemble.members), args.greedy_by
    other = "loss" if by == "metric" else "metric"
    loaded.run.data = data
    chosen = choose(loaded.run, members, lambda predict: loaded.scorer.probabilities(predict, data.dev, "dev"), other)
    soups = {}
    for mode, weights in ((f"greedy_by_{other}", uniform(chosen, count)), ("uniform", uniform(range(count), count))):
        soup = SoupModel(loaded.run, members, weights, mode)
        f1 = [loaded.scorer.evaluate(soup.predict_proba, getattr(data, split), split)[0]["f1"] for split in ("dev", "test")]
        soups[mode] = {"weights": weights, "dev": f1[0], "heldout": f1[1]}
    member_f1 = {n: {"dev": m["dev"]["f1"], "heldout": m["test"]["f1"]} for n, m in metrics["members"].items()}
    return {
        "seed": seed,
        f"greedy_by_{by}": {"weights": loaded.ensemble.coefficients, "dev": metrics["dev"]["f1"],
                            "heldout": metrics["test"]["f1"]},
        **soups,
        "members": member_f1,
        "mean_member": {split: statistics.mean(m[split] for m in member_f1.values()) for split in ("dev", "heldout")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--train-size", type=int, default=1915, help="training sentences (default: WNUT's 1,915)")
    parser.add_argument("--dev-size", type=int, default=240, help="dev sentences the run selects on (WNUT's 240)")
    parser.add_argument("--heldout-size", type=int, default=1000, help="held-out sentences that only score")
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs (benchmarks/ensembles.py's default)")
    parser.add_argument("--greedy-by", choices=("loss", "metric"), default="loss",
                        help="the run's soup.greedy_by (the plugin's default: loss); the other criterion is replayed "
                             "on its members")
    parser.add_argument("--conll", type=Path, default=CONLL, help="folder of CoNLL-2003's train.txt and valid.txt")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.conll.is_dir():
        raise SystemExit(f"{args.conll}: not found; this benchmark needs the shared CoNLL-2003 files")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_seed(seed, args, Path(tmp)) for seed in args.seeds]
    soups = ("greedy_by_metric", "greedy_by_loss", "uniform")
    print(f"\n{'seed':>5} " + " ".join(f"{s:>24}" for s in soups) + f" {'mean member':>15}"
          "   (dev / held-out F1; greedy: members kept)")
    for r in rows:
        cells = [f"{r[s]['dev']:.3f} / {r[s]['heldout']:.3f}" + (f" ({sum(1 for w in r[s]['weights'] if w)})"
                                                                  if s != "uniform" else "") for s in soups]
        mean = f"{r['mean_member']['dev']:.3f} / {r['mean_member']['heldout']:.3f}"
        print(f"{r['seed']:>5} " + " ".join(f"{c:>24}" for c in cells) + f" {mean:>15}")
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "conll")}
    args.output.write_text(json.dumps({"data": "CoNLL-2003 train sample; valid split into dev and held-out",
                                       "settings": settings, "results": rows}, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
