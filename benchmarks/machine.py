#!/usr/bin/env python3
"""What machine a benchmark ran on: CPU model, vector ISA, load, and the measured fp32 FMA peak.

    python benchmarks/machine.py                 # prints the report (peak for 1 and 2 threads)
    python benchmarks/machine.py --threads 1,2,4 --seconds 0.5

The peak comes from a small probe in the extension, `nanofrontier._core._fma_peak(threads, seconds)`:
each of `threads` plain threads runs 16 independent chains of vector FMAs (AVX-512 where the CPU has
it, else AVX2) for `seconds` and times itself; the rates are summed. No matmul can beat that number,
so the benchmarks report their GFLOP/s as a fraction of it. On a shared VM the probe is as noisy as
everything else: it is repeated (--probe-repeat, default 3) and the best is reported, as the
machine's capability.
Other benchmarks import `machine_report()` and `fma_peak()` from here.
"""

from __future__ import annotations

import argparse
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_isa() -> str:
    f = cpu_flags()
    parts = [x for x in ("avx512f", "avx512_bf16", "avx2", "fma") if x in f]
    return " ".join(parts) or "none of avx512f/avx2/fma (or not Linux)"


def load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def fma_peak(threads: int, seconds: float = 0.3, repeat: int = 3) -> tuple[float, str]:
    """Best of `repeat` probe runs: (GFLOP/s over `threads` threads, the vector width used)."""
    from nanofrontier import _core

    runs = [_core._fma_peak(threads, seconds) for _ in range(repeat)]
    return max(r[0] for r in runs), runs[0][1]


def machine_report(threads: list[int], seconds: float = 0.3, repeat: int = 3) -> tuple[list[str], dict[int, float]]:
    """Report lines and {threads: peak GFLOP/s}."""
    from nanofrontier import _core

    lines = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), flags: {vector_isa()}",
        f"nanofrontier matmul path: {_core._matmul_path()}"
        + (f" (NANOFRONTIER_MATMUL_ISA={os.environ['NANOFRONTIER_MATMUL_ISA']})"
           if "NANOFRONTIER_MATMUL_ISA" in os.environ else ""),
        load(),
    ]
    peaks = {}
    for t in threads:
        gf, width = fma_peak(t, seconds, repeat)
        peaks[t] = gf
        lines.append(f"fp32 FMA peak (probe, {width}, best of {repeat}): {t} thread(s) {gf:.0f} GFLOP/s")
    return lines, peaks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts to probe (default 1,2)")
    p.add_argument("--seconds", type=float, default=0.3, help="seconds per probe run (default 0.3)")
    p.add_argument("--probe-repeat", type=int, default=3, help="probe runs per thread count; best is shown")
    args = p.parse_args()
    lines, _ = machine_report([int(t) for t in args.threads.split(",")], args.seconds, args.probe_repeat)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
