"""nf.autocast("bf16"): the scope turns bf16 matmul/linear products on and off (nesting, restore on errors,
per thread), they are close to float32 but not equal to it, the float32 default is untouched, a GPT
forward + backward under autocast stays close to float32, and a CPU without AVX512-BF16 (forced with
NANOFRONTIER_MATMUL_ISA=avx2) gets a clear error."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier import _core
from nanofrontier.models import GPT, GPTConfig

needs_bf16 = pytest.mark.skipif(not nf.bf16_supported(), reason="this CPU has no AVX512-BF16")


def bf16_round(x):
    """float32 -> nearest bfloat16 (ties to even), returned as float32 (finite inputs)."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def operands(m=150, k=301, n=97, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)


@needs_bf16
def test_scope_switches_products_on_and_off_and_nests():
    a, b = operands()
    f32 = np.asarray(nf.tensor(a) @ nf.tensor(b))
    assert not _core._bf16_enabled()
    with nf.autocast("bf16"):
        assert _core._bf16_enabled()
        h = np.asarray(nf.tensor(a) @ nf.tensor(b))
        with nf.autocast("f32"):
            assert not _core._bf16_enabled()
            inner = np.asarray(nf.tensor(a) @ nf.tensor(b))
        assert _core._bf16_enabled()
        with nf.autocast("bfloat16"):
            again = np.asarray(nf.tensor(a) @ nf.tensor(b))
        assert _core._bf16_enabled()
    assert not _core._bf16_enabled()
    after = np.asarray(nf.tensor(a) @ nf.tensor(b))
    np.testing.assert_array_equal(inner, f32)
    np.testing.assert_array_equal(after, f32)
    np.testing.assert_array_equal(again, h)
    assert not np.array_equal(h, f32), "autocast('bf16') gave the float32 bits"
    # the product of the bf16-rounded operands, summed in f64: only f32 accumulation error left
    want = bf16_round(a).astype(np.float64) @ bf16_round(b).astype(np.float64)
    err = np.max(np.abs(h - want) / (1.0 + np.abs(want)))
    assert err < 1e-5, f"bf16 product off from the f64 product of rounded operands by {err:.2e}"
    rel = np.max(np.abs(h - f32)) / np.max(np.abs(f32))
    assert 0 < rel < 1e-2, f"bf16 vs float32: relative difference {rel:.2e}"


@needs_bf16
def test_scope_is_restored_after_an_exception_and_is_per_thread():
    with pytest.raises(RuntimeError):
        with nf.autocast("bf16"):
            raise RuntimeError("boom")
    assert not _core._bf16_enabled()
    seen = []
    with nf.autocast("bf16"):
        t = threading.Thread(target=lambda: seen.append(_core._bf16_enabled()))
        t.start()
        t.join()
    assert seen == [False], "another thread must not inherit this thread's autocast"

    @nf.autocast("bf16")
    def decorated():
        return _core._bf16_enabled()

    assert decorated() and not _core._bf16_enabled()


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        nf.autocast("float16")


@needs_bf16
def test_linear_backward_products_follow_the_forwards_scope():
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((64, 96)).astype(np.float32)
    w0 = rng.standard_normal((130, 96)).astype(np.float32)
    dy = rng.standard_normal((64, 130)).astype(np.float32)

    def grads(bf16):
        x, w = nf.tensor(x0, requires_grad=True), nf.tensor(w0, requires_grad=True)
        with nf.autocast("bf16" if bf16 else "f32"):
            y = nf.functional.linear(x, w)
        y.backward(nf.tensor(dy))  # outside the scope: the recorded setting applies
        return x.grad.numpy(), w.grad.numpy()

    (dx, dw), (hx, hw) = grads(False), grads(True)
    want_dx = bf16_round(dy).astype(np.float64) @ bf16_round(w0).astype(np.float64)
    want_dw = bf16_round(dy).T.astype(np.float64) @ bf16_round(x0).astype(np.float64)
    assert np.max(np.abs(hx - want_dx) / (1 + np.abs(want_dx))) < 1e-5
    assert np.max(np.abs(hw - want_dw) / (1 + np.abs(want_dw))) < 1e-5
    assert not np.array_equal(hx, dx) and not np.array_equal(hw, dw)


@needs_bf16
def test_gpt_forward_and_backward_under_autocast_is_close_to_float32():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (8, 64))
    y = np.roll(x, -1, axis=1)
    out = {}
    for mode in ("f32", "bf16"):
        nf.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64))
        with nf.autocast(mode):
            _, loss = m(x, y)
        loss.backward()
        out[mode] = (loss.item(), [p.grad.numpy() for p in m.parameters()])
    (l32, g32), (l16, g16) = out["f32"], out["bf16"]
    assert l32 != l16
    assert abs(l16 - l32) / l32 < 2e-3, f"loss {l16} under bf16 vs {l32} in float32"
    for a, b in zip(g32, g16):
        cos = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        assert cos > 0.99, f"gradient cosine {cos:.4f} between bf16 and float32"


@needs_bf16
def test_gpt_bf16_step_is_thread_count_independent():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 65, (8, 64))
    y = np.roll(x, -1, axis=1)
    res = []
    for threads in (1, 2):
        nf.set_num_threads(threads)
        try:
            nf.manual_seed(0)
            m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64))
            with nf.autocast("bf16"):
                _, loss = m(x, y)
            loss.backward()
            res.append((loss.item(), [p.grad.numpy() for p in m.parameters()]))
        finally:
            nf.set_num_threads(0)
    assert res[0][0] == res[1][0]
    for a, b in zip(res[0][1], res[1][1]):
        np.testing.assert_array_equal(a, b)


def test_unsupported_cpu_gets_a_clear_error():
    # NANOFRONTIER_MATMUL_ISA=avx2 makes the process answer as a CPU without AVX-512 (and so AVX512-BF16)
    script = (
        "import nanofrontier as nf\n"
        "assert not nf.bf16_supported()\n"
        "with nf.autocast('f32'):\n"
        "    pass\n"
        "try:\n"
        "    with nf.autocast('bf16'):\n"
        "        raise SystemExit('entered')\n"
        "except nf.InvalidArgumentError as e:\n"
        "    print('REFUSED', e)\n"
    )
    env = dict(os.environ, NANOFRONTIER_MATMUL_ISA="avx2")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "REFUSED" in r.stdout and "AVX512-BF16" in r.stdout, r.stdout


@needs_bf16
def test_generate_under_autocast_stays_close_to_float32_on_a_trained_model(nf_data):
    # stories260K (a trained llama2.c model): greedy decoding reading bf16 weights keeps float32's tokens
    # (all of them here; asked: 90%), and the log-probs of the shared tokens are within bf16's rounding
    from nanofrontier.data import get_file
    from nanofrontier.models import Llama

    m = Llama.from_llama2c(get_file("stories260K/stories260K.bin"))
    prompts = [[1], [1, 403, 407], [1, 75]]
    t32, l32 = m.generate(prompts, max_new_tokens=100, top_k=1)
    with nf.autocast("bf16"):
        t16, l16 = m.generate(prompts, max_new_tokens=100, top_k=1)
    same = np.mean([x == y for a, b in zip(t32, t16) for x, y in zip(a, b)])
    assert same >= 0.9, f"only {same:.0%} of the greedy tokens agree with float32"
    diffs = []
    for a, b, la, lb in zip(t32, t16, l32, l16):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))  # up to the first difference
        diffs.extend(np.abs(np.array(la[:n]) - np.array(lb[:n])))
    # measured: max 0.03, mean 0.004 nats (bf16 keeps 8 significant bits: 2^-9 relative per weight)
    assert 0 < max(diffs) < 0.1 and np.mean(diffs) < 0.01, f"log-probs: max {max(diffs):.3f}, mean {np.mean(diffs):.4f}"
    # without the scope, the float32 bits come back
    again = m.generate(prompts, max_new_tokens=100, top_k=1)
    assert again == (t32, l32)


@needs_bf16
def test_generate_after_a_training_step_reads_the_new_weights():
    # the bf16 weight copies belong to one generate call: after an optimizer step changed the weights in
    # place, the next call must read them (a stale copy would silently give the old model's numbers)
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
    nf.manual_seed(0)
    m = GPT(cfg)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    kw = dict(max_new_tokens=20, temperature=1.0, seed=5)
    with nf.autocast("bf16"):
        before = m.generate(prompts, **kw)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 65, (4, 32))
    opt = nf.optim.AdamW(m.parameters(), lr=1e-2)
    _, loss = m(x, np.roll(x, -1, axis=1))
    loss.backward()
    opt.step()
    with nf.autocast("bf16"):
        after = m.generate(prompts, **kw)
    fresh = GPT(cfg)
    fresh.load_state_dict(m.state_dict())
    with nf.autocast("bf16"):
        want = fresh.generate(prompts, **kw)
    assert after == want, "generate after a training step did not read the new weights"
    assert after[1] != before[1], "the training step made no difference"


@needs_bf16
def test_generate_under_autocast_is_row_and_thread_independent():
    # a row's tokens and log-prob bits are the same alone, in a batch (16+ rows of a small model run as
    # groups of rows) and on 1 or 2 threads, as in float32
    nf.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64))
    prompts = [[1 + r % 7, 2 + r % 5, 3] for r in range(17)]
    seeds = list(range(100, 117))
    res = []
    for threads in (1, 2):
        nf.set_num_threads(threads)
        try:
            with nf.autocast("bf16"):
                res.append(m.generate(prompts, max_new_tokens=12, seed=seeds))
        finally:
            nf.set_num_threads(0)
    assert res[0] == res[1]
    for r in (0, 8, 16):
        with nf.autocast("bf16"):
            toks, lps = m.generate([prompts[r]], max_new_tokens=12, seed=[seeds[r]])
        assert (toks[0], lps[0]) == (res[0][0][r], res[0][1][r]), f"row {r} alone differs"
