"""Adversarial training on the embedded default: clean vs fgsm, pgd, freelb and fast FGSM, same epochs.

    python benchmarks/hardening.py [--ways clean,fgsm,pgd,freelb,fast] [--train-limit N] [--epochs 10]

At the defaults (every training tweet, 10 epochs) the five trainings take about an hour and a half
on 2 CPU cores (`pgd` alone about 25 minutes); `--ways ""` times the training steps alone (six minutes).

Every way is one `fmkit run` on MiniLM-L6 and the WNUT-16 split (0.8/0.1/0.1, seed 42), trained on the
first --train-limit training tweets (dev and test whole), with the same epochs and learning rate. Each
model is scored on the test split clean and under the same attack: PGD-10 from the clean input, l2,
the plugins' epsilon (or --epsilon). The clean model goes through `fmkit eval RUN --data test.conll
--attack pgd`; the hardened ones are scored by `fmkit run` itself under their plugin's evaluation
attack, which is that same PGD-10. Training cost is the time spent in training steps (dev
evaluations excluded) relative to clean. Then the step costs: a clean step, `pgd` with 1-3 ascent
steps, and the textbook PGD-3 this implementation improves on (a separate clean pass and a full
backward per ascent step), timed on the same batches. Prints tables, writes
benchmarks/results/hardening.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "hardening.json"
ATTACK = "pgd"
WAYS = {  # name -> plugin settings
    "clean": [],
    "fgsm": ["fgsm"],
    "pgd": ["pgd"],
    "freelb": ["freelb"],
    "fast": ["fgsm", "fgsm.random_init=true", "fgsm.adv_weight=1.0"],  # Wong et al. 2020: no clean pass
}


def train(way: str, settings: list[str], common: list[str], runs: Path) -> tuple[Path, dict, dict]:
    """`fmkit run` for one way: the run directory, its metrics and its training log record."""
    from fmkit.config import build_config
    from fmkit.pipeline import execute
    from fmkit.registry import discover

    plugins = [s for s in settings if "=" not in s]
    options = [s for s in settings if "=" in s]
    config = build_config(None, {"plugins": ",".join(plugins) or None, "runs_dir": str(runs), "name": way},
                          [*common, *options], set(discover()))
    print(f"training {way} ...", file=sys.stderr, flush=True)
    target, metrics = execute(config)
    member = next(json.loads(line) for line in (target / "log.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "member")
    return target, metrics, member


def evaluate(target: Path, test_file: Path, attack_settings: list[str]) -> dict:
    """`fmkit eval RUN --data test --attack pgd --json`, in process."""
    from fmkit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", str(target), "--data", str(test_file), "--attack", ATTACK, "--json",
                     *[x for s in attack_settings for x in ("--set", s)]])
    assert code == 0, f"fmkit eval failed for {target}"
    return json.loads(out.getvalue())


def write_conll(path: Path, sentences: list) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.words, s.tags)) for s in sentences) + "\n",
                    encoding="utf-8")
    return path


def step_costs(config, task, data, batches: int, repeats: int) -> dict:
    """Seconds per training step on the same real batches: clean, each way (pgd with 1-3 steps) and
    the textbook PGD-3. A step is what fmkit.train does per batch: the way's passes, then gradient
    clipping, the fused AdamW update and zeroing the gradients, which every way pays once."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from fmkit.data.batching import BucketBatchSampler, Collator
    from fmkit.data.encode import encode
    from fmkit.model import quiet_transformers
    from fmkit.train import forward_logits, task_loss
    from fmkit_harden.embeddings import perturbable
    from fmkit_harden.fgsm import FGSM
    from fmkit_harden.freelb import FreeLB
    from fmkit_harden.pgd import PGD
    from fmkit_pretrain.hf import resolve_model

    path, _ = resolve_model(config.model)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(task.labels)).train()
    features = encode(task, data.train, tokenizer, config.train.max_length)
    sampler = BucketBatchSampler([len(f) for f in features], config.train.batch_size, shuffle=True, seed=1)
    collate = Collator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay,
                                  fused=True)
    chosen = [collate([(i, features[i]) for i in b]) for b, _ in zip(sampler, range(batches))]

    def backward(loss):
        loss.backward()

    def hardener(cls, **options):
        plugin = cls(cls.Options(**options))
        plugin.name = cls.name
        return plugin.fmkit_harden(run=None)

    def clean(batch):
        backward(task_loss(forward_logits(model, batch), batch))

    attack = hardener(PGD, steps=3).embedding_attack

    def textbook(batch):
        """The widespread recipe: a clean pass of its own, a full backward per ascent step (parameter
        gradients computed, then thrown away), then the adversarial pass."""
        r = attack.settings
        backward(task_loss(forward_logits(model, batch), batch) * (1 - r.adv_weight))
        saved = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        keep = perturbable(batch)[..., None]
        delta = torch.zeros_like(model.get_input_embeddings()(batch["input_ids"]))
        for _ in range(r.steps):
            delta.requires_grad_(True)
            backward(task_loss(attack.logits(model, batch, delta), batch))
            delta = attack.ascend(delta.detach(), delta.grad, r.step_size) * keep
        for p, g in zip(model.parameters(), saved):
            p.grad = g
        backward(task_loss(attack.logits(model, batch, delta), batch) * r.adv_weight)

    hardeners = {"fgsm": hardener(FGSM), "fast": hardener(FGSM, random_init=True, adv_weight=1.0),
                 **{f"pgd steps={k}": hardener(PGD, steps=k) for k in (1, 3)}, "pgd": hardener(PGD),  # default: 2 steps
                 "freelb": hardener(FreeLB)}
    ways = {"clean": clean, "textbook PGD-3": textbook}
    for name, h in hardeners.items():
        ways[name] = lambda batch, h=h: h.train_step(model, batch, backward)
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):  # interleaved rounds, median: a busy neighbour slows every way alike
        for name, step in ways.items():
            started = time.perf_counter()
            for batch in chosen:
                step(batch)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            rounds[name].append((time.perf_counter() - started) / len(chosen))
    return {name: statistics.median(times) for name, times in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=None, help="training tweets (default: all 1,915)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--model", default=None, help="another foundation (a smoke test on a tiny model)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="every plugin's epsilon, for training and for the attack (default: theirs)")
    parser.add_argument("--seed", type=int, default=None, help="another training seed (initialisation, data order); "
                        "the split stays the default seed's, written to files")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--step-batches", type=int, default=10, help="batches timed per way in the step costs (0: skip)")
    args = parser.parse_args()

    from fmkit.config import RunConfig
    from fmkit.data import load_task_data

    common = [*([f"data.limit={args.train_limit}"] if args.train_limit else []),
              f"train.epochs={args.epochs}", f"train.lr={args.lr}",
              "train.progress=false", *([f"model={args.model}"] if args.model else [])]
    config = RunConfig(data={"limit": args.train_limit} if args.train_limit else {},
                       train={"lr": args.lr}, **({"model": args.model} if args.model else {}))
    task, data = load_task_data(config)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        test_file = write_conll(Path(tmp) / "test.conll", data.test)
        if args.seed is not None:  # the same tweets in each split; only the training seed changes
            common += [f"seed={args.seed}", f"data.test={test_file}",
                       *(f"data.{name}={write_conll(Path(tmp) / f'{name}.conll', getattr(data, name))}"
                         for name in ("train", "dev"))]
        for way in [w for w in args.ways.split(",") if w]:  # --ways "": step costs only
            settings = WAYS[way] + [f"{name}.epsilon={args.epsilon}" for name in WAYS[way] if args.epsilon
                                    and "=" not in name]
            started = time.perf_counter()
            target, metrics, member = train(way, settings, common, Path(tmp) / "runs")
            if way == "clean":  # scored by `fmkit eval --attack pgd`
                scored = evaluate(target, test_file, [f"{ATTACK}.epsilon={args.epsilon}"] if args.epsilon else [])
                clean, robust = scored["f1"], scored["robust"][ATTACK]
            else:  # scored at run time under the plugin's own evaluation attack: PGD-10, same epsilon and
                # norm, from the clean input, i.e. the very attack `--attack pgd` runs
                clean, robust = metrics["test"]["f1"], metrics["robust"][settings[0]]["test"]
            results[way] = {
                "test_f1": clean, "robust_f1": robust["f1"], "attack_success_rate": robust["attack_success_rate"],
                "sentences_per_second": member["sentences_per_second"], "train_seconds": member["seconds"],
                "best_epoch": member["best_epoch"], "dev_f1": metrics["dev"]["f1"],
                "wall_seconds": round(time.perf_counter() - started, 1), "settings": settings}
            print(json.dumps({way: results[way]}), file=sys.stderr, flush=True)
    costs = step_costs(config, task, data, args.step_batches, repeats=5) if args.step_batches else {}

    base = results.get("clean")
    print(f"\n{config.model} on WNUT-16: {len(data.train)} train tweets, {args.epochs} epochs, lr {args.lr}; "
          f"test {len(data.test)} tweets; attack: PGD-10, epsilon {args.epsilon or 'default'}; {os.cpu_count()} CPUs")
    print(f"{'way':<8} {'clean F1':>9} {'robust F1':>10} {'vs clean':>9} {'success':>8} {'step cost':>10} {'in run':>7}")
    for way, r in results.items():
        if base:
            r["robust_gain"] = r["robust_f1"] - base["robust_f1"]
            r["in_run_cost"] = round(base["sentences_per_second"] / r["sentences_per_second"], 2)
        if costs:
            r["step_cost"] = round(costs[way] / costs["clean"], 2)
        print(f"{way:<8} {r['test_f1']:>9.4f} {r['robust_f1']:>10.4f} {r.get('robust_gain', 0):>+9.4f} "
              f"{r['attack_success_rate']:>8.3f} {r.get('step_cost', 0):>9.2f}x {r.get('in_run_cost', 0):>6.2f}x")
    per_step = None
    if costs:
        print(f"\nseconds per training step, clipping and AdamW update included (median of 5 interleaved rounds of "
              f"{args.step_batches} batches of {config.train.batch_size}; 'in run' above: throughput of the whole run, "
              "exposed to other jobs):")
        for name, s in costs.items():
            print(f"  {name:<15} {s:.3f}s  {s / costs['clean']:.2f}x clean")
        per_step = (costs["pgd steps=3"] - costs["pgd steps=1"]) / 2
        print(f"  pgd: each ascent step beyond the first costs {per_step:.3f}s = "
              f"{per_step / costs['clean']:.2f}x a clean step; textbook PGD-3 costs "
              f"{costs['textbook PGD-3'] / costs['pgd steps=3']:.2f}x this pgd with 3 steps")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "train_tweets": len(data.train), "test_tweets": len(data.test), "epochs": args.epochs, "lr": args.lr,
        "attack": f"{ATTACK} (PGD-10)", "epsilon": args.epsilon, "results": results,
        "step_seconds": costs, "pgd_seconds_per_extra_ascent_step": per_step,
    }, indent=2) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
