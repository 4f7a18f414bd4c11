#!/usr/bin/env python3
"""Tiny Shakespeare, character level: the same GPT trained the same number of steps in float32 and under
`nf.autocast("bf16")`, then both evaluated (in float32) on the same held-out batches. The issue's goal:
the bf16 run's validation loss within 1% of the float32 run's.

    python benchmarks/bf16_shakespeare.py                  # tiny config, 300 steps, 2 threads
    python benchmarks/bf16_shakespeare.py --steps 600 --threads 1

Both runs start from the same initial weights (same seed) and see the same batches; AdamW keeps float32
master weights in both (every tensor is float32; autocast only rounds the operands of the matmul/linear
products, forward and backward, to bf16 inside the kernel). Config = bench_train.py's "tiny" (4 layers,
4 heads, 128 wide, block 128, batch 16, vocab 65), lr 1e-3 with 30 warm-up steps and cosine decay to 1e-4,
gradient clipping at 1.0. Printed: each run's final train and validation loss, their relative difference,
steps/s, process CPU seconds and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(nf, mode: str, args, train_ids, val_batches) -> dict:
    from nanofrontier.models import GPT, GPTConfig

    nf.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128))
    opt = nf.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(args.seed)
    t0, c0 = time.perf_counter(), cpu_seconds()
    losses = []
    for step in range(args.steps):
        lr = nf.optim.warmup_cosine(step, max_lr=1e-3, warmup_steps=30, total_steps=args.steps, min_lr=1e-4)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = nf.data.get_batch(train_ids, 16, 128, rng)
        with nf.autocast(mode):
            _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()  # the products recorded under autocast run their backward in bf16 too
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    model.eval()
    with nf.no_grad():
        val = float(np.mean([model(x, y)[1].item() for x, y in val_batches]))
    return {"train": float(np.mean(losses[-20:])), "val": val, "wall": wall, "cpu": cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=20)
    args = p.parse_args()

    import nanofrontier as nf
    from machine import load

    if not nf.bf16_supported():
        raise SystemExit("this machine has no bf16 matmul (needs AVX512-BF16)")
    nf.set_num_threads(args.threads)
    train_ids, val_ids = nf.data.shakespeare_splits()
    vrng = np.random.default_rng(1234)
    val_batches = [nf.data.get_batch(val_ids, 16, 128, vrng) for _ in range(args.eval_batches)]
    print(f"{load()}; {args.steps} steps, {args.threads} thread(s), matmul path {nf._core._matmul_path()}")
    res = {}
    for mode in ("f32", "bf16"):
        res[mode] = r = run(nf, mode, args, train_ids, val_batches)
        print(f"{mode:>4}: train loss (last 20 steps) {r['train']:.4f}, val loss {r['val']:.4f}, "
              f"{args.steps / r['wall']:.2f} steps/s, {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU "
              f"({load()})")
    d = (res["bf16"]["val"] - res["f32"]["val"]) / res["f32"]["val"]
    ok = abs(d) <= 0.01
    print(f"RESULT: val loss bf16 {res['bf16']['val']:.4f} vs f32 {res['f32']['val']:.4f}: {100 * d:+.3f}% "
          f"(target within 1%: {'met' if ok else 'NOT met'}); bf16 step time "
          f"{res['bf16']['wall'] / res['f32']['wall']:.2f}x the f32 run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
