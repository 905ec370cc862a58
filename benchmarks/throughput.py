"""Training throughput: fmkit vs the Hugging Face Trainer's recipes, in fp32 and bf16.

Same model (the embedded MiniLM-L6), same WNUT-16 split, batch size, learning-rate schedule and
epochs, in one run. Prints a table and writes benchmarks/results/throughput.json (or --output).

    python benchmarks/throughput.py [--epochs 2] [--batch-size 16] [--train-limit N] [--lora] [--only WAYS]

Machine load changes the absolute numbers; the ways run back to back in one process, so the ratios are
what to read, and the ratio that counts is against `trainer_grouped`, the Trainer's best recipe.

- fmkit: `fmkit run` (length-bucketed, dynamically padded batches); throughput counts the time
  spent in training steps (its per-epoch dev evaluations are excluded), F1 is fmkit's own test F1.
- fmkit_bf16: the same with `train.precision=bf16` (Accelerate's bf16 autocast; on a CPU with
  avx512_bf16 or AMX the matrix products run in bf16).
- trainer: `transformers.Trainer` + `DataCollatorForTokenClassification` (dynamic padding of
  random batches), tokenised with the usual `tokenize_and_align_labels` (truncation at 128).
- trainer_grouped: the same Trainer with `group_by_length=True` (transformers 5:
  `train_sampling_strategy="group_by_length"`; batches of similar lengths, drawn
  from shuffled mega-batches): the recipe a user who knows the Trainer turns on.
- trainer_grouped_bf16: that, with `bf16=True` (the Trainer's autocast).
- fixed128: the Trainer with every sentence padded to 128 sub-tokens (`padding="max_length"`).
The baselines are scored with seqeval on the same test split, one label per word (first sub-token).
Tokens per second count the sub-word tokens of the training sentences (special tokens included, no
padding): the same count for every way. `--lora`: fmkit's `--plugins adapter` at its defaults, and the
Trainer's model wrapped by PEFT with the same LoRA (r 8, alpha 16, dropout 0.1, every linear layer of
the encoder, at the adapter's learning rate). On a GPU (CUDA), every way runs there.
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
WAYS = ["fmkit", "fmkit_bf16", "trainer", "trainer_grouped", "trainer_grouped_bf16", "fixed128"]


def split_data(config):
    from fmkit.data import load_task_data

    return load_task_data(config)


def run_fmkit(config) -> dict:
    from fmkit.pipeline import execute
    from fmkit.registry import select

    target, metrics = execute(config, select(config))
    member = [json.loads(line) for line in (target / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "member"][0]
    return {"sentences_per_second": member["sentences_per_second"], "test_f1": metrics["test"]["f1"]}


def train_tokens(config, data) -> int:
    """Sub-word tokens in one pass over the training sentences (truncated at 128, as every way does)."""
    from transformers import AutoTokenizer

    from fmkit_pretrain.hf import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model)[0])
    encoded = tokenizer([s.words for s in data.train], is_split_into_words=True, truncation=True, max_length=128)
    return sum(len(ids) for ids in encoded["input_ids"])


def run_trainer(config, task, data, way: str, lora: bool) -> dict:
    import numpy as np
    import torch
    from seqeval.metrics import f1_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, default_data_collator)
    from transformers.utils import logging

    from fmkit_pretrain.hf import resolve_model

    fixed = way == "fixed128"
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
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="TOKEN_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules="all-linear"))
    t = config.train
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
            num_train_epochs=t.epochs, learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=0,
            lr_scheduler_type="linear", max_grad_norm=t.max_grad_norm, eval_strategy="no", save_strategy="no",
            report_to=[], seed=config.seed, disable_tqdm=True, logging_strategy="no",
            use_cpu=not torch.cuda.is_available(), bf16=way.endswith("bf16"),
            # transformers 5: `train_sampling_strategy="group_by_length"` is 4.x's `group_by_length=True`
            train_sampling_strategy="group_by_length" if way.startswith("trainer_grouped") else "random",
        )
        collator = default_data_collator if fixed else DataCollatorForTokenClassification(tokenizer)
        trainer = Trainer(model=model, args=args, train_dataset=tokenize_and_align_labels(data.train),
                          data_collator=collator)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        trainer.args.train_sampling_strategy = "random"  # else predict reorders the test rows by length too
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
    parser.add_argument("--only", default=",".join(WAYS), help=f"ways, comma-separated (default: {','.join(WAYS)})")
    parser.add_argument("--lora", action="store_true", help="LoRA adapters (fmkit's adapter plugin, PEFT for the Trainer)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    ways = args.only.split(",")
    if unknown := [w for w in ways if w not in WAYS]:
        parser.error(f"--only: unknown way {unknown[0]!r}; ways: {', '.join(WAYS)}")

    import torch

    from fmkit.config import RunConfig
    from fmkit.train import bf16_in_hardware

    with tempfile.TemporaryDirectory() as runs:
        config = RunConfig(runs_dir=Path(runs), name="bench", data={"limit": args.train_limit},
                           plugins=["adapter"] if args.lora else [],
                           train={"epochs": args.epochs, "progress": False, "warmup_ratio": 0.0})
        from fmkit.registry import select, with_train_defaults

        config = with_train_defaults(config, select(config))  # the adapter's learning rate, for the Trainer too
        if args.batch_size:
            config.train.batch_size = args.batch_size
        task, data = split_data(config)
        tokens = train_tokens(config, data)
        results = {}
        for way in ways:
            print(f"training {way} ...", file=sys.stderr, flush=True)
            if way.startswith("fmkit"):
                precision = "bf16" if way.endswith("bf16") else "no"
                result = run_fmkit(config.model_copy(update={"name": way, "train": config.train.model_copy(
                    update={"precision": precision})}))
            else:
                result = run_trainer(config, task, data, way, args.lora)
            result["tokens_per_second"] = result["sentences_per_second"] * tokens / len(data.train)
            results[way] = result
            print(json.dumps({way: result}), file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    base = results.get("trainer_grouped", results.get("trainer", {})).get("sentences_per_second")
    print(f"\n{'LoRA' if args.lora else 'full fine-tuning'}, {args.epochs} epochs, batch {config.train.batch_size}, "
          f"{len(data.train)} train sentences ({tokens} tokens), {device}, bf16 in hardware: {bf16_in_hardware()}")
    print(f"{'way':<21} {'sent/s':>8} {'tokens/s':>9} {'vs grouped':>11} {'test F1':>8}")
    for way, r in results.items():
        ratio = f"{r['sentences_per_second'] / base:.2f}x" if base else "-"
        print(f"{way:<21} {r['sentences_per_second']:>8.1f} {r['tokens_per_second']:>9.0f} {ratio:>11} "
              f"{r['test_f1']:>8.4f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"epochs": args.epochs, "batch_size": config.train.batch_size,
                                       "lora": args.lora, "device": device, "bf16_in_hardware": bf16_in_hardware(),
                                       "train_sentences": len(data.train), "train_tokens": tokens,
                                       "results": results}, indent=2) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
