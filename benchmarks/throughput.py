"""Training throughput: fmkit vs a plain Hugging Face Trainer vs the fixed-128-padding recipe.

Same model (the embedded MiniLM-L6), same WNUT-16 split, batch size, learning-rate schedule and
epochs, in one run. Prints a table and writes benchmarks/results/throughput.json.

    python benchmarks/throughput.py [--epochs 2] [--batch-size 16] [--train-limit N]

Machine load changes the absolute numbers; the three ways run back to back in one process, so the
ratios are what to read.

- fmkit: `fmkit run` (length-bucketed, dynamically padded batches); throughput counts the time
  spent in training steps (its per-epoch dev evaluations are excluded), F1 is fmkit's own test F1.
- trainer: `transformers.Trainer` + `DataCollatorForTokenClassification` (dynamic padding of
  random batches), tokenised with the usual `tokenize_and_align_labels` (truncation at 128).
- fixed128: the same Trainer with every sentence padded to 128 sub-tokens (`padding="max_length"`).
Both baselines are scored with seqeval on the same test split, one label per word (first sub-token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "throughput.json"


def split_data(config):
    from fmkit.data import load_task_data

    return load_task_data(config)


def run_fmkit(config) -> dict:
    from fmkit.pipeline import execute

    target, metrics = execute(config)
    member = [json.loads(line) for line in (target / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "member"][0]
    return {"sentences_per_second": member["sentences_per_second"], "test_f1": metrics["test"]["f1"]}


def run_trainer(config, task, data, fixed: bool) -> dict:
    import numpy as np
    import torch
    from seqeval.metrics import f1_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, default_data_collator)
    from transformers.utils import logging

    from fmkit_pretrain.hf import resolve_model

    logging.set_verbosity_error()
    path, _ = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    label2id = task.label2id

    def tokenize_and_align_labels(sentences, with_labels=True):
        enc = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=128,
                        padding="max_length" if fixed else False)
        rows = []
        for i, s in enumerate(sentences):
            previous, labels = None, []
            for w in enc.word_ids(i):
                labels.append(-100 if w is None or w == previous else label2id.get(s.tags[w], 0))
                previous = w
            row = {k: enc[k][i] for k in enc.keys()}
            row["labels"] = labels
            rows.append(row)
        return rows

    torch.manual_seed(config.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)), label2id=label2id)
    t = config.train
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
            num_train_epochs=t.epochs, learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=0,
            lr_scheduler_type="linear", max_grad_norm=t.max_grad_norm, eval_strategy="no", save_strategy="no",
            report_to=[], seed=config.seed, disable_tqdm=True, logging_strategy="no", use_cpu=True,
        )
        collator = default_data_collator if fixed else DataCollatorForTokenClassification(tokenizer)
        trainer = Trainer(model=model, args=args, train_dataset=tokenize_and_align_labels(data.train),
                          data_collator=collator)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        output = trainer.predict(tokenize_and_align_labels(data.test))
    logits = output.predictions
    predicted = []
    for i, s in enumerate(data.test):
        labels = output.label_ids[i]
        words = [task.labels[int(np.argmax(logits[i][j]))] for j in range(len(labels)) if labels[j] != -100]
        predicted.append(words + ["O"] * (len(s.words) - len(words)))
    return {"sentences_per_second": len(data.train) * t.epochs / seconds,
            "trainer_reported_samples_per_second": result.metrics.get("train_samples_per_second"),
            "test_f1": float(f1_score([s.tags for s in data.test], predicted))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: fmkit's train.batch_size")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N sentences of the split")
    parser.add_argument("--only", default="fmkit,trainer,fixed128")
    args = parser.parse_args()

    from fmkit.config import RunConfig

    with tempfile.TemporaryDirectory() as runs:
        config = RunConfig(runs_dir=Path(runs), name="bench", data={"limit": args.train_limit},
                           train={"epochs": args.epochs, "progress": False, "warmup_ratio": 0.0})
        if args.batch_size:
            config.train.batch_size = args.batch_size
        task, data = split_data(config)
        results = {}
        for way in args.only.split(","):
            print(f"training {way} ...", file=sys.stderr, flush=True)
            results[way] = run_fmkit(config) if way == "fmkit" else run_trainer(config, task, data, fixed=way == "fixed128")
    base = results.get("trainer", {}).get("sentences_per_second")
    print(f"\n{args.epochs} epochs, batch {config.train.batch_size}, {len(data.train)} train sentences, "
          f"{os.cpu_count()} CPUs, torch threads default")
    print(f"{'way':<10} {'sent/s':>8} {'vs trainer':>11} {'test F1':>8}")
    for way, r in results.items():
        ratio = f"{r['sentences_per_second'] / base:.2f}x" if base else "-"
        print(f"{way:<10} {r['sentences_per_second']:>8.1f} {ratio:>11} {r['test_f1']:>8.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"epochs": args.epochs, "batch_size": config.train.batch_size,
                                   "train_sentences": len(data.train), "results": results}, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
