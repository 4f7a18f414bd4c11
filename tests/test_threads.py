"""Threads: the GIL is released during heavy ops, results do not depend on the thread count, a forked
child can still use the pool, and Ctrl-C interrupts a long call."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import nanofrontier as nf


def test_gil_is_released_during_a_long_op():
    a = nf.randn(8, 768, 768)
    a @ a  # warm up
    nf.set_num_threads(1)  # leave a core for the Python thread
    try:
        counter, stop = [0], threading.Event()

        def spin():
            while not stop.is_set():
                counter[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        time.sleep(0.05)
        calls = 0
        start_count, t0 = counter[0], time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            a @ a
            calls += 1
        during = counter[0] - start_count
        stop.set()
        t.join()
    finally:
        nf.set_num_threads(0)
    # while the GIL is held by a Rust call the spinner cannot run at all; released, it runs throughout
    assert during > 10_000, f"Python thread advanced only {during} times during {calls} matmul calls"


def _train(threads):
    nf.set_num_threads(threads)
    try:
        nf.manual_seed(0)
        model = nf.nn.MLP([32, 256, 256, 10], activation="gelu")
        opt = nf.optim.AdamW(model.parameters(), lr=1e-3)
        x = nf.randn(512, 32)
        y = nf.randint(0, 10, (512,))
        for _ in range(5):
            loss = nf.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            nf.optim.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return loss.item(), [p.numpy() for p in model.parameters()]
    finally:
        nf.set_num_threads(0)


def test_one_and_two_threads_give_identical_results():
    l1, p1 = _train(1)
    l2, p2 = _train(2)
    assert l1 == l2
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


def _child(q):
    x = nf.randn(256, 256)
    q.put(float((x @ x).sum().item()))


def test_forked_child_can_use_the_pool():
    x = nf.randn(512, 512)
    x @ x  # the parent's pool is now running
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=60)
    if p.is_alive():
        p.kill()
        raise AssertionError("forked child hung on its first parallel op")
    assert p.exitcode == 0
    assert np.isfinite(q.get(timeout=5))


def test_ctrl_c_interrupts_a_long_rust_call():
    script = textwrap.dedent(
        """
        import sys, time
        import nanofrontier as nf
        a = nf.randn(8192, 8192)  # one product takes seconds
        print("ready", flush=True)
        t0 = time.perf_counter()
        try:
            for _ in range(3):
                a @ a
            print("finished", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted {time.perf_counter() - t0:.2f}", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    latency = time.perf_counter() - sent
    assert out.startswith("interrupted"), out
    assert latency < 1.5, f"took {latency:.1f}s to stop after Ctrl-C"
    assert os.name == "posix"
