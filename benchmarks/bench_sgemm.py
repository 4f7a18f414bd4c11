#!/usr/bin/env python3
"""f32 matmul speed: nanofrontier vs numpy/OpenBLAS at its best kernel, each side in its own processes.

    python benchmarks/bench_sgemm.py                     # 2 threads, 5 rounds
    python benchmarks/bench_sgemm.py --threads 1 --rounds 7
    python benchmarks/bench_sgemm.py --cases 1024²,linear    # only cases whose label contains one of these
    python benchmarks/bench_sgemm.py --json results.json
    python benchmarks/bench_sgemm.py --threads 1 --clock cpu     # a loaded machine: CPU time, one thread

One command prints the machine (CPU model, the ISA path matmul takes, load, the measured fp32 FMA peak for
1 and 2 threads: benchmarks/machine.py) and, per case, GFLOP/s and fraction of the peak for nanofrontier
and numpy and their ratio. Each round starts one worker process per side, in alternating order (ours first
in even rounds, numpy first in odd ones); a worker times every case (median over --repeat runs, each of
enough calls to fill --min-time seconds, after a warm-up). The table shows the median over rounds of each
side's GFLOP/s and the median (min–max) over rounds of the per-round ratio, so slow phases of a shared VM
hit both sides alike.

numpy's best kernel: OpenBLAS picks its kernel from the CPU unless OPENBLAS_CORETYPE forces one, and some
machines set OPENBLAS_CORETYPE (this development VM sets Haswell, an AVX2 kernel, and OPENBLAS_L2_SIZE).
The numpy worker is started with both removed from its environment, so OpenBLAS detects the CPU (SkylakeX,
its AVX-512 kernel, on an AVX-512 machine); the header shows the kernel it reports (needs threadpoolctl).
--numpy-env keeps the environment as it is instead. Threads: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS and
NANOFRONTIER_NUM_THREADS are set to --threads in each worker before import.

The linear-layer cases are the three products of one GPT-small layer (B·T = 4096 rows, 384 → 1536): the
forward x·Wᵀ (`nf.linear`), dX = dY·W and dW = dYᵀ·X, the last two timed as the layer's backward with
only x or only W requiring a gradient (numpy gets the same products with transposed views, which it
hands to BLAS without copies). Set NANOFRONTIER_MATMUL_ISA=avx2 to time our AVX2 path on an AVX-512 CPU.

--clock cpu times with the process's CPU time instead of the wall clock: on a machine other processes
load, a worker that is descheduled then loses nothing, so one-thread ratios stay meaningful (with two
threads it would count threads that spin while waiting, so use it with --threads 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, kind, shapes): kind "mm" is a @ b with shapes (a, b); "lin"/"dx"/"dw" are a linear layer's
# forward / dX / dW with shapes (x, W)
CASES: list[tuple[str, str, tuple[tuple[int, ...], tuple[int, ...]]]] = [
    ("256²", "mm", ((256, 256), (256, 256))),
    ("512²", "mm", ((512, 512), (512, 512))),
    ("1024²", "mm", ((1024, 1024), (1024, 1024))),
    ("2048²", "mm", ((2048, 2048), (2048, 2048))),
    ("(4096×128)·(128×512)", "mm", ((4096, 128), (128, 512))),
    ("linear fwd (4096×384)·(384×1536)", "lin", ((4096, 384), (1536, 384))),
    ("linear dX (4096×1536)·(1536×384)", "dx", ((4096, 384), (1536, 384))),
    ("linear dW (1536×4096)·(4096×384)", "dw", ((4096, 384), (1536, 384))),
    ("linear fwd (4096×1536)·(1536×384)", "lin", ((4096, 1536), (384, 1536))),
    ("linear dW (384×4096)·(4096×1536)", "dw", ((4096, 1536), (384, 1536))),
    ("48 × (256×64)·(64×256) (q·kᵀ)", "mm", ((8, 6, 256, 64), (8, 6, 64, 256))),
    ("48 × (256×256)·(256×64) (p·v)", "mm", ((8, 6, 256, 256), (8, 6, 256, 64))),
    ("32 × (128×32)·(32×128)", "mm", ((4, 8, 128, 32), (4, 8, 32, 128))),
]


def case_flops(kind: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> float:
    if kind == "mm":
        m, k, n = sa[-2], sa[-1], sb[-1]
        batch = 1
        for d in sa[:-2]:
            batch *= d
        return 2.0 * batch * m * k * n
    rows, in_f, out_f = sa[0], sa[1], sb[0]
    return 2.0 * rows * in_f * out_f


def time_per_call(fn: Callable[[], Any], repeat: int, min_time: float, clock: str = "wall") -> float:
    """Median seconds per call of `fn` over `repeat` runs, after a warm-up (wall clock or CPU time)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    warm = 0
    while warm < 3 or now() - start < min_time:
        fn()
        warm += 1
    one = (now() - start) / warm
    calls = max(1, min(100_000, int(min_time / max(one, 1e-9)) + 1))
    per_call = []
    for _ in range(repeat):
        t0 = now()
        for _ in range(calls):
            fn()
        per_call.append((now() - t0) / calls)
    return statistics.median(per_call)


# ---- workers ----


def worker(side: str, cases: list[int], repeat: int, min_time: float, clock: str) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"gflops": {}}
    if side == "numpy":
        try:
            from threadpoolctl import threadpool_info

            blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
            out["blas"] = "; ".join(
                f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
                f"threads={i.get('num_threads')}"
                for i in blas
            )
        except ImportError:
            out["blas"] = "threadpoolctl not installed (pip install threadpoolctl to see the OpenBLAS kernel)"
    else:
        import nanofrontier as nf
        import nanofrontier.functional  # noqa: F401

        nf.set_num_threads(int(os.environ["NANOFRONTIER_NUM_THREADS"]))
    for ci in cases:
        label, kind, (sa, sb) = CASES[ci]
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        if kind != "mm":
            dy = rng.standard_normal((sa[0], sb[0]), dtype=np.float32)
        if side == "numpy":
            fn = {
                "mm": lambda: a @ b,
                "lin": lambda: a @ b.T,
                "dx": lambda: dy @ b,
                "dw": lambda: dy.T @ a,
            }[kind]
        else:
            fn = nf_case(nf, kind, a, b, dy if kind != "mm" else None)
        out["gflops"][label] = case_flops(kind, sa, sb) / time_per_call(fn, repeat, min_time, clock) / 1e9
    return out


def nf_case(nf: Any, kind: str, a: Any, b: Any, dy: Any) -> Callable[[], Any]:
    import numpy as np

    if kind == "mm":
        A, B = nf.tensor(a), nf.tensor(b)
        want = a.astype(np.float64) @ b.astype(np.float64)
        got = np.asarray(A @ B)
        err = float(np.max(np.abs(got - want)) / (1.0 + np.max(np.abs(want))))
        if err > 1e-4:
            print(f"WARNING: nanofrontier differs from the f64 product by {err:.2e} (relative)", file=sys.stderr)
        return lambda: A @ B
    if kind == "lin":
        X, W = nf.tensor(a), nf.tensor(b)

        def fwd() -> Any:
            with nf.no_grad():
                return nf.functional.linear(X, W)

        return fwd
    # dX alone (only x needs a gradient) or dW alone (only W does): the layer's backward, graph kept
    X, W = nf.tensor(a, requires_grad=kind == "dx"), nf.tensor(b, requires_grad=kind == "dw")
    Y, DY = nf.functional.linear(X, W), nf.tensor(dy)
    leaf = X if kind == "dx" else W

    def bwd() -> None:
        leaf.grad = None
        Y.backward(DY, retain_graph=True)

    return bwd


# ---- the driver ----


def run_worker(side: str, args: argparse.Namespace, cases: list[int]) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NANOFRONTIER_NUM_THREADS"):
        env[var] = str(args.threads)
    if side == "numpy" and not args.numpy_env:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return spawn_worker(os.path.abspath(__file__), side, args, cases, env)


def spawn_worker(script: str, side: str, args: argparse.Namespace, cases: list[int],
                 env: dict[str, str]) -> dict[str, Any]:
    """Run ``script --worker side`` on ``cases`` in its own process with ``env``; its JSON result."""
    cmd = [sys.executable, script, "--worker", side, "--case-ids", ",".join(map(str, cases)),
           "--repeat", str(args.repeat), "--min-time", str(args.min_time), "--clock", args.clock]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{res.stderr}")
    if res.stderr.strip():
        print(res.stderr.strip(), file=sys.stderr)
    return json.loads(res.stdout)


def worker_parser(doc: str | None, sides: list[str], rounds: int, repeat: int,
                  min_time: float) -> argparse.ArgumentParser:
    """The options every alternating-worker benchmark here takes, a worker's own (hidden) ones included;
    the script adds what is its alone."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every side (default 2)")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"rounds of one worker per side, alternating order (default {rounds})")
    p.add_argument("--repeat", type=int, default=repeat,
                   help=f"timed runs per case in a worker; median (default {repeat})")
    p.add_argument("--min-time", type=float, default=min_time,
                   help=f"seconds of calls per timed run (default {min_time})")
    p.add_argument("--cases", help="comma-separated substrings; only cases whose label contains one")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time with the wall clock (default) or the process's CPU time (loaded machines, 1 thread)")
    p.add_argument("--worker", choices=sides, help=argparse.SUPPRESS)
    p.add_argument("--case-ids", help=argparse.SUPPRESS)
    return p


def serve_worker(args: argparse.Namespace, worker: Any) -> bool:
    """In a worker process (``--worker`` given): time its cases with ``worker``, print the JSON, and return
    True; else False."""
    if not args.worker:
        return False
    ids = [int(i) for i in args.case_ids.split(",")]
    print(json.dumps(worker(args.worker, ids, args.repeat, args.min_time, args.clock)))
    return True


def main() -> int:
    p = worker_parser(__doc__, ["nf", "numpy"], rounds=5, repeat=5, min_time=0.05)
    p.add_argument("--numpy-env", action="store_true", help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for numpy")
    args = p.parse_args()
    if serve_worker(args, worker):
        return 0

    cases = [i for i, c in enumerate(CASES) if not args.cases or any(s in c[0] for s in args.cases.split(","))]
    sys.path.insert(0, HERE)
    from machine import load, machine_report

    lines, peaks = machine_report(sorted({1, 2, args.threads}))
    print("\n".join(lines))
    peak = peaks[args.threads]
    results: dict[str, list[dict[str, float]]] = {"nf": [], "numpy": []}
    blas = ""
    for r in range(args.rounds):
        for side in (("nf", "numpy") if r % 2 == 0 else ("numpy", "nf")):
            out = run_worker(side, args, cases)
            results[side].append(out["gflops"])
            blas = out.get("blas", blas)
        print(f"  round {r + 1}/{args.rounds} done ({load()})", file=sys.stderr)
    env_note = "environment as is" if args.numpy_env else "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset"
    print(f"numpy BLAS ({env_note}): {blas}")
    print(f"after the runs: {load()}")
    print(
        f"\nf32 matmul, {args.threads} thread(s), {args.rounds} rounds (median; ratio: median (min–max) of the "
        f"per-round ratios); % = of the {args.threads}-thread FMA peak {peak:.0f} GFLOP/s; clock: {args.clock}\n"
    )
    print("| case | nanofrontier GFLOP/s | % peak | numpy GFLOP/s | % peak | nf / numpy |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for ci in cases:
        label = CASES[ci][0]
        ours = [x[label] for x in results["nf"]]
        theirs = [x[label] for x in results["numpy"]]
        ratios = [o / t for o, t in zip(ours, theirs)]
        mo, mt, mr = statistics.median(ours), statistics.median(theirs), statistics.median(ratios)
        rows.append({"case": label, "nf": ours, "numpy": theirs, "ratio": ratios})
        print(
            f"| {label} | {mo:.0f} | {100 * mo / peak:.0f}% | {mt:.0f} | {100 * mt / peak:.0f}% | "
            f"{mr:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": lines, "peaks": peaks, "blas": blas, "threads": args.threads, "results": rows},
                      fh, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
