#!/usr/bin/env python3
"""f32 matmul speed: nanofrontier vs numpy (and torch, if installed), measured in the same run.

    python benchmarks/bench_sgemm.py                 # 2 threads, median of 7 repeats
    python benchmarks/bench_sgemm.py --threads 1 --repeat 15
    python benchmarks/bench_sgemm.py --json results.json

Prints a markdown table of GFLOP/s (2·M·K·N per product, times the batch) for each shape: the median
over --repeat repeats of the time of `A @ B` alone (inputs are converted before timing; each repeat
runs enough calls to take at least --min-time seconds, after a warm-up).

Threads: every library gets the same count (--threads, default 2). numpy's BLAS reads its thread count
only when numpy is imported, so this script sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS
before importing numpy. It also unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some machines set
for old OpenBLAS builds and which slow a current one; the header
shows which kernel OpenBLAS then uses (needs threadpoolctl). On a shared VM the second vCPU's speed
swings from run to run, so compare medians from several runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    p.add_argument("--repeat", type=int, default=7, help="timed repeats per case; the median is reported (default 7)")
    p.add_argument("--min-time", type=float, default=0.02, help="seconds of calls per repeat, at least (default 0.02)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if it is installed")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' for stdout)")
    return p.parse_args()


# Thread counts and OpenBLAS settings must be in the environment before numpy (or torch) is imported.
ARGS = parse_args()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NANOFRONTIER_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

import nanofrontier as nf  # noqa: E402

try:
    if ARGS.no_torch:
        raise ImportError
    import torch  # noqa: E402
except ImportError:
    torch = None

# (label, a shape, b shape); the first five are the shapes the build notes compare
CASES: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = [
    ("256²", (256, 256), (256, 256)),
    ("512²", (512, 512), (512, 512)),
    ("1024²", (1024, 1024), (1024, 1024)),
    ("2048²", (2048, 2048), (2048, 2048)),
    ("(4096×128)·(128×512)", (4096, 128), (128, 512)),
    ("32 × (128×32)·(32×128)", (4, 8, 128, 32), (4, 8, 32, 128)),
    ("(8,512,768)·(768,768)", (8, 512, 768), (768, 768)),
    ("decode (1×768)·(768×2304)", (1, 768), (768, 2304)),
]


def flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> float:
    m, k = a_shape[-2], a_shape[-1]
    n = b_shape[-1]
    batch = int(np.prod(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))) if len(a_shape) > 2 or len(b_shape) > 2 else 1
    return 2.0 * batch * m * k * n


def time_per_call(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    """Median seconds per call of `fn` over `repeat` repeats, after a warm-up."""
    # warm-up: thread pools, page faults, caches; also learn how many calls fill min_time
    start = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - start < min_time:
        fn()
        warm += 1
    one = (time.perf_counter() - start) / warm
    calls = max(1, min(100_000, int(min_time / max(one, 1e-9)) + 1))
    per_call = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call)


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl to see the OpenBLAS kernel)"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            parts.append(
                f"{info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} "
                f"threads={info.get('num_threads')}"
            )
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def main() -> int:
    n = ARGS.threads
    nf.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for label, sa, sb in CASES:
        a_np = rng.standard_normal(sa, dtype=np.float32)
        b_np = rng.standard_normal(sb, dtype=np.float32)
        A, B = nf.tensor(a_np), nf.tensor(b_np)
        # same answer before timing anything
        want = a_np @ b_np
        got = np.asarray(A @ B)
        err = float(np.max(np.abs(got - want)) / (1.0 + np.max(np.abs(want)))) if want.size else 0.0
        if err > 1e-4:
            print(f"WARNING {label}: nanofrontier differs from numpy by {err:.2e} (relative)", file=sys.stderr)
        f = flops(sa, sb)
        row: dict[str, Any] = {"case": label, "a": list(sa), "b": list(sb), "flops": f, "max_rel_diff": err}
        row["nanofrontier"] = f / time_per_call(lambda: A @ B, ARGS.repeat, ARGS.min_time) / 1e9
        row["numpy"] = f / time_per_call(lambda: a_np @ b_np, ARGS.repeat, ARGS.min_time) / 1e9
        if torch is not None:
            a_t, b_t = torch.from_numpy(a_np), torch.from_numpy(b_np)
            row["torch"] = f / time_per_call(lambda: a_t @ b_t, ARGS.repeat, ARGS.min_time) / 1e9
        rows.append(row)
        print(f"  {label}: done", file=sys.stderr)

    header = {
        "threads": n,
        "repeat": ARGS.repeat,
        "numpy": np.__version__,
        "blas": blas_info(),
        "nanofrontier": getattr(nf, "__version__", "?"),
        "torch": torch.__version__ if torch is not None else None,
    }
    print(
        f"\nf32 matmul GFLOP/s, {n} thread(s), median of {ARGS.repeat} repeats. numpy {header['numpy']} "
        f"({header['blas']})" + (f", torch {header['torch']}" if torch is not None else "") + "\n"
    )
    cols = ["nanofrontier", "numpy", "nf / numpy"] + (["torch", "nf / torch"] if torch is not None else [])
    print("| case | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        cells = [f"{r['nanofrontier']:.1f}", f"{r['numpy']:.1f}", f"{r['nanofrontier'] / r['numpy']:.2f}"]
        if torch is not None:
            cells += [f"{r['torch']:.1f}", f"{r['nanofrontier'] / r['torch']:.2f}"]
        print(f"| {r['case']} | " + " | ".join(cells) + " |")

    if ARGS.json:
        doc = json.dumps({"config": header, "results": rows}, indent=2, ensure_ascii=False)
        if ARGS.json == "-":
            print(doc)
        else:
            with open(ARGS.json, "w", encoding="utf-8") as fh:
                fh.write(doc + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
