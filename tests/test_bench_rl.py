"""The post-training benchmarks run: each script's nanofrontier side for one step (and one rollout), as the
script itself runs it (a preparing child, then a measuring child), so they cannot rot. Where torch is
importable, or NF_BENCH_TORCH_PYTHON names a python that has it, its side runs too and both sides'
first-step losses must agree."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script):
    cmd = [sys.executable, str(BENCH / script), "--rounds", "1", "--steps", "1", "--warmup", "0",
           "--threads", "1"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def first_losses(out):
    m = re.search(r"first-step loss: nanofrontier ([-0-9.e+]+)(?:, torch ([-0-9.e+]+),)?", out)
    assert m, out
    return [float(x) for x in m.groups() if x is not None]


@pytest.mark.parametrize("script", ["bench_dpo.py", "bench_grpo.py"])
def test_benchmark_runs_one_step(script):
    out = run(script)
    for phase in ("forward", "loss", "backward", "optimizer", "total"):
        row = re.search(rf"^\| {phase} \| ([0-9.]+) \|", out, re.MULTILINE)
        assert row and float(row.group(1)) > 0, f"no timing for {phase}:\n{out}"
    losses = first_losses(out)
    assert all(math.isfinite(x) for x in losses), out
    if len(losses) == 2:  # torch ran too
        assert abs(losses[0] - losses[1]) < 1e-4, out
    assert out.count("command: ") == 1
    if script == "bench_grpo.py":  # the rollout, reported apart
        row = re.search(r"^\| new tokens/s \| ([0-9,]+) \|", out, re.MULTILINE)
        assert row and int(row.group(1).replace(",", "")) > 0, out
