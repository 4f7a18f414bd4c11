#!/usr/bin/env python3
"""Decode from bf16 weights: `model.generate` under `nf.autocast("bf16")` (each decode step reads a bf16
copy of every weight, made once per call) vs the same call in float32, each side in its own worker
processes, alternating (bench_sgemm.spawn_worker). The tiny and small GPT of bench_decode.py, batch 1 and
a batch of 8, random weights (the same in both sides), no stop tokens, so every call makes --tokens steps.

    python benchmarks/bench_bf16_decode.py                         # 2 threads, 3 rounds, 128 new tokens
    python benchmarks/bench_bf16_decode.py --threads 1 --clock cpu  # a loaded machine

Decode is bound by memory: each step streams every weight once (one product per layer row tile of
≤ 32 rows, so a batch of 8 reads them once per step too). "weight GB/s" is that traffic: the linear
layers' and the head's weights (4 bytes each in float32, 2 in bf16) × decode steps per second. The time of
a call includes its prompt pass and, under bf16, making the copies. The header is benchmarks/machine.py's
(CPU model, ISA flags, load, fp32 FMA peak). Also printed: how many greedy tokens of a 64-token run agree
between the two sides (random weights make near-ties common, so this is a sanity check, not a quality
measure: tests/test_bf16.py checks a trained model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_sgemm import serve_worker, spawn_worker, time_per_call, worker_parser  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=512),
    "small": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=512),
}
# (label, config, batch)
CASES = [("tiny, batch 1", "tiny", 1), ("tiny, batch 8", "tiny", 8), ("small, batch 1", "small", 1),
         ("small, batch 8", "small", 8)]
PROMPT_LEN = 4


def weight_elems(cfg: dict[str, int]) -> int:
    """Weights one decode step reads: per layer c_attn 3C², attn c_proj C², c_fc 4C², mlp c_proj 4C²;
    the head (tied to wte) V·C."""
    c = cfg["n_embd"]
    return cfg["n_layer"] * 12 * c * c + cfg["vocab_size"] * c


def worker(side: str, cases: list[int], repeat: int, min_time: float, clock: str) -> dict[str, Any]:
    import nanofrontier as nf
    from nanofrontier.models import GPT, GPTConfig

    nf.set_num_threads(int(os.environ["NANOFRONTIER_NUM_THREADS"]))
    tokens = int(os.environ["BENCH_TOKENS"])
    out: dict[str, Any] = {"seconds": {}, "greedy": {}}
    for ci in cases:
        label, name, b = CASES[ci]
        nf.manual_seed(0)
        model = GPT(GPTConfig(**CONFIGS[name]))
        prompts = [[1 + (r + i) % 60 for i in range(PROMPT_LEN)] for r in range(b)]
        with nf.autocast(side):

            def fn() -> Any:
                return model.generate(prompts, max_new_tokens=tokens, temperature=1.0, seed=1)

            assert all(len(t) == tokens for t in fn()[0])
            out["seconds"][label] = time_per_call(fn, repeat, min_time, clock)
            out["greedy"][label] = model.generate(prompts, max_new_tokens=64, top_k=1)[0]
    return out


def run_worker(side: str, args: argparse.Namespace, cases: list[int]) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NANOFRONTIER_NUM_THREADS"):
        env[var] = str(args.threads)
    env["BENCH_TOKENS"] = str(args.tokens)
    return spawn_worker(os.path.abspath(__file__), side, args, cases, env)


def main() -> int:
    p = worker_parser(__doc__, ["f32", "bf16"], rounds=3, repeat=3, min_time=0.2)
    p.add_argument("--tokens", type=int, default=128, help="new tokens per call (default 128)")
    args = p.parse_args()
    if serve_worker(args, worker):
        return 0
    if args.tokens < 1 or PROMPT_LEN + args.tokens > 512:
        raise SystemExit("--tokens must be in 1..508 (the models hold 512 positions)")

    cases = [i for i, c in enumerate(CASES) if not args.cases or any(s in c[0] for s in args.cases.split(","))]
    from machine import load, machine_report

    import nanofrontier as nf

    if not nf.bf16_supported():
        raise SystemExit(f"no bf16 on this machine ({nf._core._matmul_path()}; needs AVX512-BF16)")
    lines, _ = machine_report(sorted({1, 2, args.threads}))
    print("\n".join(lines))
    sides = ["f32", "bf16"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            results[side].append(run_worker(side, args, cases))
        print(f"  round {r + 1}/{args.rounds} done ({load()})", file=sys.stderr)
    print(f"after the runs: {load()}")
    print(f"\nbf16-weight vs float32 decode, {args.threads} thread(s), {args.tokens} new tokens per call, "
          f"{args.rounds} rounds (median; ratio: median (min–max) of the per-round ratios); clock: {args.clock}\n")
    head = ("| case | weights f32 / bf16 | f32 tokens/s | f32 weight GB/s | bf16 tokens/s | bf16 weight GB/s "
            "| bf16 / f32 | greedy tokens equal |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    rows = []
    for ci in cases:
        label, name, b = CASES[ci]
        elems = weight_elems(CONFIGS[name])
        f = [args.tokens / x["seconds"][label] for x in results["f32"]]  # decode steps/s
        h = [args.tokens / x["seconds"][label] for x in results["bf16"]]
        ratios = [y / x for x, y in zip(f, h)]
        mf, mh = statistics.median(f), statistics.median(h)
        g32, g16 = results["f32"][0]["greedy"][label], results["bf16"][0]["greedy"][label]
        same = sum(x == y for a, c in zip(g32, g16) for x, y in zip(a, c))
        total = sum(len(a) for a in g32)
        rows.append({"case": label, "f32_steps_per_s": f, "bf16_steps_per_s": h, "ratio": ratios,
                     "weight_bytes_f32": 4 * elems, "greedy_equal": [same, total]})
        print(f"| {label} | {4 * elems / 1e6:.1f} / {2 * elems / 1e6:.1f} MB | {b * mf:,.0f} | "
              f"{4 * elems * mf / 1e9:.1f} | {b * mh:,.0f} | {2 * elems * mh / 1e9:.1f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {same}/{total} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": lines, "threads": args.threads, "tokens": args.tokens, "results": rows}, fh,
                      indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
