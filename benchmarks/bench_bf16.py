#!/usr/bin/env python3
"""bf16 matmul speed: nanofrontier's bf16 path (`nf.autocast("bf16")`) vs its own f32 path, each in its own
processes, alternating; torch's CPU bf16 matmul beside them when torch is importable (never a dependency).

    python benchmarks/bench_bf16.py                        # 2 threads, 3 rounds
    python benchmarks/bench_bf16.py --threads 1 --clock cpu --rounds 5    # a loaded machine
    python benchmarks/bench_bf16.py --cases 1024²,linear

The header is benchmarks/machine.py's (CPU model, ISA flags incl. avx512_bf16, load, the measured fp32 FMA
peak). The bf16 peak is DERIVED, not measured: 2× the measured fp32 FMA peak, because one `vdpbf16ps`
(32 bf16 products summed pairwise into 16 f32 lanes: 64 flops) issues at the rate of one 512-bit
`vfmadd` (16 lanes: 32 flops) on Zen 4/5 (AMD's instruction tables give both the same throughput).
Figures are GFLOP/s of the f32-equivalent work (2·m·k·n per product); "% peak" is of the f32 peak for
the f32 path and of the bf16 peak for the bf16 paths.

Cases are bench_sgemm.py's (square products, a GPT-small linear layer's forward, dX and dW; the last two
timed as the layer's backward with only x or only W requiring a gradient, recorded under the scope).
Inputs are float32 on both nanofrontier sides (the bf16 path rounds them while packing, as in training);
torch gets bf16 tensors.
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

from bench_sgemm import (  # noqa: E402
    CASES, case_flops, nf_case, serve_worker, spawn_worker, time_per_call, worker_parser,
)

DEFAULT = ("512²", "1024²", "2048²", "(4096×128)·(128×512)", "linear fwd (4096×384)", "linear dX (4096×1536)",
           "linear dW (1536×4096)")


def worker(side: str, cases: list[int], repeat: int, min_time: float, clock: str) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"gflops": {}}
    if side == "torch":
        import torch

        torch.set_num_threads(int(os.environ["NANOFRONTIER_NUM_THREADS"]))
        out["torch"] = torch.__version__
    else:
        import nanofrontier as nf
        import nanofrontier.functional  # noqa: F401

        nf.set_num_threads(int(os.environ["NANOFRONTIER_NUM_THREADS"]))
        if side == "bf16":
            # the whole worker in the scope: the timed forwards and the graphs of the backward cases
            nf._core._set_bf16(True)
    for ci in cases:
        label, kind, (sa, sb) = CASES[ci]
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        dy = rng.standard_normal((sa[0], sb[0]), dtype=np.float32) if kind != "mm" else None
        if side == "torch":
            A, B = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
            if kind != "mm":
                DY = torch.from_numpy(dy).bfloat16()
            fn = {
                "mm": lambda: A @ B,
                "lin": lambda: torch.nn.functional.linear(A, B),
                "dx": lambda: DY @ B,
                "dw": lambda: DY.T @ A,
            }[kind]
        else:
            if side == "bf16" and kind == "mm":
                # a check that the scope is on: the product is that of the bf16-rounded operands
                got = np.asarray(nf.tensor(a) @ nf.tensor(b))
                f32 = a.astype(np.float64) @ b.astype(np.float64)
                rel = float(np.max(np.abs(got - f32)) / np.max(np.abs(f32)))
                if not 0 < rel < 2e-2:
                    print(f"WARNING: {label}: bf16 vs f64 relative difference {rel:.2e}", file=sys.stderr)
                A, B = nf.tensor(a), nf.tensor(b)

                def fn(A: Any = A, B: Any = B) -> Any:  # (nf_case's f64 check is for the f32 path)
                    return A @ B
            else:
                fn = nf_case(nf, kind, a, b, dy)
        out["gflops"][label] = case_flops(kind, sa, sb) / time_per_call(fn, repeat, min_time, clock) / 1e9
    return out


def run_worker(side: str, args: argparse.Namespace, cases: list[int]) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NANOFRONTIER_NUM_THREADS"):
        env[var] = str(args.threads)
    return spawn_worker(os.path.abspath(__file__), side, args, cases, env)


def main() -> int:
    p = worker_parser(__doc__, ["f32", "bf16", "torch"], rounds=3, repeat=5, min_time=0.05)
    args = p.parse_args()
    if serve_worker(args, worker):
        return 0

    wanted = args.cases.split(",") if args.cases else DEFAULT
    cases = [i for i, c in enumerate(CASES) if any(s in c[0] for s in wanted)]
    from machine import load, machine_report

    import nanofrontier as nf

    if not nf.bf16_supported():
        raise SystemExit(f"no bf16 matmul on this machine ({nf._core._matmul_path()}; needs AVX512-BF16)")
    lines, peaks = machine_report(sorted({1, 2, args.threads}))
    print("\n".join(lines))
    peak = peaks[args.threads]
    try:
        import torch  # noqa: F401

        sides = ["f32", "bf16", "torch"]
    except ImportError:
        sides = ["f32", "bf16"]
        print("torch: not importable (its bf16 column is left out)")
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            results[side].append(run_worker(side, args, cases)["gflops"])
        print(f"  round {r + 1}/{args.rounds} done ({load()})", file=sys.stderr)
    print(f"after the runs: {load()}")
    print(
        f"\nbf16 vs f32 matmul, {args.threads} thread(s), {args.rounds} rounds (median GFLOP/s; "
        f"ratio: median (min–max) of the per-round ratios); f32 peak {peak:.0f} GFLOP/s (measured), "
        f"bf16 peak {2 * peak:.0f} (derived: 2x); clock: {args.clock}\n"
    )
    head = "| case | f32 GFLOP/s | % f32 peak | bf16 GFLOP/s | % bf16 peak | bf16 / f32 |"
    if "torch" in sides:
        head += " torch bf16 GFLOP/s | % bf16 peak | ours bf16 / torch bf16 |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    rows = []
    for ci in cases:
        label = CASES[ci][0]
        f = [x[label] for x in results["f32"]]
        h = [x[label] for x in results["bf16"]]
        ratios = [y / x for x, y in zip(f, h)]
        mf, mh = statistics.median(f), statistics.median(h)
        row = {"case": label, "f32": f, "bf16": h, "ratio": ratios}
        line = (f"| {label} | {mf:.0f} | {100 * mf / peak:.0f}% | {mh:.0f} | {100 * mh / (2 * peak):.0f}% | "
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
        if "torch" in sides:
            t = [x[label] for x in results["torch"]]
            mt = statistics.median(t)
            row["torch"] = t
            line += f" {mt:.0f} | {100 * mt / (2 * peak):.0f}% | {mh / mt:.2f} |"
        rows.append(row)
        print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": lines, "peaks": peaks, "threads": args.threads, "results": rows}, fh,
                      indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
