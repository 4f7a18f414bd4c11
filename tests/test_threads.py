"""Threads: the GIL is released during heavy ops, results do not depend on the thread count, a forked
child can still use the pool, and Ctrl-C interrupts a long call. Whole-model calls (forward, backward,
generate) run on a pool worker while the calling thread waits: the tests marked "on the pool" check that
such a call behaves as if it ran on the caller (grad mode, Ctrl-C, GIL, concurrency, fork)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

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


def _run_threads(work, n, errors, hung):
    """Run work(0..n) on n Python threads; fail if one hangs (2 min) or any raised (collected in errors)."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), hung
    assert not errors, errors


# Model calls run on the pool once batch × length × n_embd reaches the parallel grain (16384), and
# backward once the logits do: these defaults (4 × 64 × 64, logits 4 × 64 × 65) are just over both.
def _tiny_gpt(block_size=64, n_layer=2):
    nf.manual_seed(0)
    return nf.models.GPT(
        nf.models.GPTConfig(vocab_size=65, n_layer=n_layer, n_head=2, n_embd=64, block_size=block_size)
    )


def _batch(b=4, t=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 65, (b, t))
    return x, np.roll(x, -1, axis=1)


def _train_gpt(threads):
    nf.set_num_threads(threads)
    try:
        model = _tiny_gpt()
        opt = nf.optim.AdamW(model.parameters(), lr=1e-3)
        for i in range(3):
            _, loss = model(*_batch(seed=i))  # forward and backward run on the pool
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), [p.numpy() for p in model.parameters()]
    finally:
        nf.set_num_threads(0)


@pytest.mark.parametrize("train", [_train, _train_gpt], ids=["mlp-ops", "gpt-calls-on-the-pool"])
def test_one_and_two_threads_give_identical_results(train):
    l1, p1 = train(1)
    l2, p2 = train(2)
    assert l1 == l2
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


def _child(q):
    x = nf.randn(256, 256)
    model = _tiny_gpt()
    _, loss = model(*_batch())  # a call on the pool, in the child
    loss.backward()
    q.put(float((x @ x).sum().item()) + loss.item())


def test_forked_child_can_use_the_pool():
    x = nf.randn(512, 512)
    x @ x  # the parent's pool is now running
    _, loss = _tiny_gpt()(*_batch())
    loss.backward()  # and has run whole calls
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


def test_grad_mode_of_the_caller_applies_to_calls_on_the_pool():
    model = _tiny_gpt()
    x, y = _batch()
    _, loss = model(x, y)
    assert loss.requires_grad
    with nf.no_grad():
        _, loss = model(x, y)
        assert not loss.requires_grad
        assert not model.token_logprobs(x, y).requires_grad
    assert nf.is_grad_enabled()
    _, loss = model(x, y)  # the worker that ran the no_grad call records again
    assert loss.requires_grad
    loss.backward()
    # backward's own no_grad stays inside it: the next forward on this thread records
    assert model(x, y)[1].requires_grad


def _forward_backward(model, x, y):
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), [p.grad.numpy().copy() for p in model.parameters()]


def test_concurrent_python_threads_calling_the_pool_get_their_own_results():
    models = [_tiny_gpt() for _ in range(4)]
    batches = [_batch(seed=i) for i in range(4)]
    want = [_forward_backward(m.copy(), *b) for m, b in zip(models, batches)]
    got, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(3):
                for p in models[i].parameters():
                    p.grad = None
                got[i] = _forward_backward(models[i], *batches[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    _run_threads(work, 4, errors, "a thread hung")
    for i, ((wl, wg), (gl, gg)) in enumerate(zip(want, got)):
        assert wl == gl, f"thread {i}: loss {gl} != {wl}"
        for a, b in zip(wg, gg):
            np.testing.assert_array_equal(a, b)


def test_threads_sharing_one_model_do_not_deadlock():
    # all read the same weights and accumulate into the same .grad at once; only one call is on the pool
    # at a time (the others run on their own threads), so none can end up waiting, on a worker, for a lock
    # held by another call lower on the same worker's stack (parallel.rs tests that case directly)
    model = _tiny_gpt()
    errors = []

    def work(seed):
        try:
            for _ in range(5):
                _, loss = model(*_batch(seed=seed))
                loss.backward()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    _run_threads(work, 3, errors, "threads sharing a model deadlocked")
    assert all(np.isfinite(p.grad.numpy()).all() for p in model.parameters())


def test_gil_is_released_during_a_call_on_the_pool():
    model = _tiny_gpt(block_size=512)
    model.generate([[1, 2, 3]], max_new_tokens=8, temperature=0.0)  # warm up
    counter, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        start_count, t0 = counter[0], time.perf_counter()
        model.generate([[1, 2, 3]], max_new_tokens=500, temperature=0.0)
        took = time.perf_counter() - t0
        during = counter[0] - start_count
    finally:
        stop.set()
        t.join()
    assert during > 10_000, f"Python thread advanced only {during} times during a {took:.2f}s generate call"


def test_ctrl_c_interrupts_a_long_call_on_the_pool():
    # generate runs whole on a pool worker; the main thread waits and polls for SIGINT
    script = textwrap.dedent(
        """
        import time
        import nanofrontier as nf
        cfg = nf.models.GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=256, block_size=16384)
        model = nf.models.GPT(cfg)
        model.generate([[1, 2, 3]], max_new_tokens=4, temperature=0.0)
        print("ready", flush=True)
        t0 = time.perf_counter()
        try:
            model.generate([[1, 2, 3]], max_new_tokens=16000, temperature=0.0)  # many seconds
            print("finished", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted {time.perf_counter() - t0:.2f}", flush=True)
        # the pool still works after an interrupted call
        print(model.generate([[1, 2, 3]], max_new_tokens=2, temperature=0.0)[0], flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    latency = time.perf_counter() - sent
    lines = out.splitlines()
    assert lines and lines[0].startswith("interrupted"), out
    assert latency < 1.5, f"took {latency:.1f}s to stop after Ctrl-C"
    assert len(lines) == 2 and lines[1].startswith("[["), out


def test_resizing_the_pool_frees_the_old_threads():
    # each size change used to leak the old pool and all its threads
    code = textwrap.dedent(
        """
        import os, time
        import nanofrontier as nf

        def threads():
            return len(os.listdir("/proc/self/task"))

        x = nf.ones(1 << 18)
        before = threads()
        for i in range(40):
            nf.set_num_threads(1 + i % 4)
            (x + 1.0).sum()  # large enough to run on the pool, which builds it at this size
        deadline = time.time() + 20
        while threads() > before + 4 and time.time() < deadline:
            time.sleep(0.02)  # a freed pool's threads exit once idle
        print(before, threads())
        """
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split())
    assert after <= before + 4, f"{before} threads before 40 resizes, {after} after"
