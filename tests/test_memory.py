"""Hostile sizes end in AllocationError (a MemoryError), never in an abort or the OOM killer.

Each hostile call runs in a child process, so a crash (an abort from an infallible allocation, or the
kernel's OOM kill) fails the test instead of killing pytest. Requests that would be touched (random
fills) are run only under ``NANOFRONTIER_MEMORY_LIMIT``, a cap the process puts on itself, so that the
test never really fills this machine's memory."""

import os
import subprocess
import sys
import textwrap

import pytest

GIB = 1 << 30


def _run_child(code, limit=None):
    """Run ``code`` in a fresh interpreter; return its stdout. Fails with the exit status on a crash."""
    env = dict(os.environ)
    env.pop("NANOFRONTIER_MEMORY_LIMIT", None)
    if limit is not None:
        env["NANOFRONTIER_MEMORY_LIMIT"] = str(limit)
    prelude = "import nanofrontier as nf\n"
    r = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    how = {-6: "aborted (SIGABRT)", -9: "killed (SIGKILL: OOM killer?)", 137: "killed (OOM)"}.get(
        r.returncode, ""
    )
    assert r.returncode == 0, f"child exited with {r.returncode} {how}\nstderr: {r.stderr[-2000:]}"
    return r.stdout


def _expect_allocation_error(call, limit=None):
    out = _run_child(
        f"""
        try:
            {call}
        except nf.AllocationError as e:
            assert isinstance(e, MemoryError)
            print("AllocationError:", e)
        else:
            print("no error")
        """,
        limit,
    )
    assert out.startswith("AllocationError:"), f"{call}: expected an AllocationError, got {out!r}"
    return out


def _mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    pytest.fail("no MemAvailable in /proc/meminfo")


def test_randint_larger_than_memory_is_an_allocation_error():
    # 2^31 * 5 int64 = 80 GiB: passed the float32-sized check, then aborted in an infallible collect
    out = _expect_allocation_error("nf.randint(0, 5, (2**31, 5))")
    assert "85899345920 bytes" in out and "available" in out, out


def test_multinomial_with_a_huge_sample_count_is_an_allocation_error():
    _expect_allocation_error("nf.multinomial(nf.tensor([0.5, 0.5]), 2**40, replacement=True)")


def test_a_request_above_the_available_memory_is_refused_before_it_is_granted():
    # (n, 0) @ (0, 1) is n zeros that are never written: without the check the kernel grants the buffer
    # (it overcommits) and nothing fails until it is used; with it, it is refused up front. (Do not try a
    # buffer that is filled at once, like nf.zeros(n), on a build without the check: that gets the process
    # OOM-killed.)
    n = (_mem_available() + 2 * GIB) // 4
    out = _expect_allocation_error(f"nf.zeros({n}, 0) @ nf.zeros(0, 1)")
    assert "matmul: cannot allocate" in out and f"({n * 4} bytes)" in out, out
    assert "of memory is available" in out, out


def test_a_model_larger_than_the_memory_limit_is_refused_not_oom_killed():
    # MLP([2, 2**26]): weight 512 MiB + bias 256 MiB under a 700 MiB cap. Each buffer alone fits; the
    # weight is filled (touched) at init, so the bias no longer does. nf.nn.MLP([2, 2**31]) is the same
    # on a machine with less than 24 GiB free, where the OOM killer used to end the process.
    out = _expect_allocation_error("nf.nn.MLP([2, 2**26])", limit=700 << 20)
    assert "rand: cannot allocate 0.2 GiB (268435456 bytes): only" in out, out
    # the same model fits once the cap allows it
    assert _run_child("nf.nn.MLP([2, 2**26]); print('ok')", limit=2 * GIB).strip() == "ok"


def test_the_hostile_mlp_is_refused_under_a_memory_limit():
    out = _expect_allocation_error("nf.nn.MLP([2, 2**31])", limit=2 * GIB)
    assert "17179869184 bytes" in out, out  # the (2^31, 2) weight, refused before it is filled
