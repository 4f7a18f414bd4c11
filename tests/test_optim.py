"""Optimizers against independent numpy implementations of torch's update rules, clipping, schedules."""

import math

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.testing import assert_close


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def _set_grads(ps, gs):
    for p, g in zip(ps, gs):
        p.grad = g


def test_adamw_matches_reference_over_several_steps():
    lr, b1, b2, eps, wds = 0.01, 0.9, 0.95, 1e-8, [0.1, 0.0]
    ref = [p.astype(np.float64) for p in _params()]
    m = [np.zeros_like(p) for p in ref]
    v = [np.zeros_like(p) for p in ref]
    ps = [nf.tensor(p, requires_grad=True) for p in _params()]
    opt = nf.optim.AdamW([{"params": [ps[0]], "weight_decay": wds[0]}, {"params": [ps[1]], "weight_decay": wds[1],
                                                                          "lr": lr * 2}],
                         lr=lr, betas=(b1, b2), eps=eps)
    for t in range(1, 6):
        gs = _grads(t)
        _set_grads(ps, gs)
        opt.step()
        for i, (p, g) in enumerate(zip(ref, gs)):
            glr = lr if i == 0 else lr * 2
            p *= 1 - glr * wds[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g.astype(np.float64) ** 2
            mh, vh = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p -= glr * mh / (np.sqrt(vh) + eps)
        for i in range(2):
            assert_close(ps[i], ref[i], atol=1e-6, rtol=1e-5, msg=f"step {t} param {i}")


def test_first_adam_step_moves_each_weight_by_lr():
    # with bias correction, step 1 is lr * g/|g| (eps aside): every weight moves by exactly lr
    p = nf.tensor([1.0, -2.0, 3.0], requires_grad=True)
    p.grad = [0.5, -4.0, 1e-3]
    nf.optim.AdamW([p], lr=0.1, weight_decay=0.0).step()
    assert_close(p, [0.9, -1.9, 2.9], atol=2e-5)


def test_sgd_momentum_matches_reference():
    lr, mom, wd = 0.1, 0.9, 0.01
    ref = [p.astype(np.float64) for p in _params()]
    buf = [None, None]
    ps = [nf.tensor(p, requires_grad=True) for p in _params()]
    opt = nf.optim.SGD(ps, lr=lr, momentum=mom, weight_decay=wd)
    for t in range(1, 5):
        gs = _grads(t)
        _set_grads(ps, gs)
        opt.step()
        for i, (p, g) in enumerate(zip(ref, gs)):
            d = g + wd * p
            buf[i] = d if buf[i] is None else mom * buf[i] + d
            p -= lr * buf[i]
        for i in range(2):
            assert_close(ps[i], ref[i], atol=1e-6, rtol=1e-5, msg=f"step {t} param {i}")


def test_params_without_grad_are_skipped_and_bad_args_rejected():
    a, b = nf.tensor([1.0], requires_grad=True), nf.tensor([2.0], requires_grad=True)
    a.grad = [1.0]
    nf.optim.SGD([a, b], lr=0.5).step()
    assert a.item() == 0.5 and b.item() == 2.0
    with pytest.raises(ValueError):
        nf.optim.AdamW([a], betas=(1.5, 0.9))
    with pytest.raises(ValueError):
        nf.optim.SGD([a], nesterov=True)
    with pytest.raises(ValueError):
        nf.optim.SGD([])
    with pytest.raises(ValueError):
        nf.optim.SGD([{"params": [a]}, {"params": [a]}])
    with pytest.raises(ValueError):
        opt = nf.optim.AdamW([a], lr=-1.0)
        opt.step()


def test_clip_grad_norm():
    a, b = nf.tensor([0.0, 0.0], requires_grad=True), nf.tensor([0.0], requires_grad=True)
    a.grad, b.grad = [3.0, 0.0], [4.0]
    norm = nf.optim.clip_grad_norm_([a, b], 1.0)
    assert abs(norm - 5.0) < 1e-6
    assert_close(a.grad, [0.6, 0.0], atol=1e-6)
    assert_close(b.grad, [0.8], atol=1e-6)
    norm = nf.optim.clip_grad_norm_([a, b], 10.0)  # below the limit: untouched
    assert abs(norm - 1.0) < 1e-5
    assert_close(b.grad, [0.8], atol=1e-6)


def test_schedules():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    lrs = [nf.optim.warmup_cosine(s, **kw) for s in range(120)]
    assert abs(lrs[0] - 0.1) < 1e-12 and abs(lrs[9] - 1.0) < 1e-12
    assert abs(lrs[60] - (0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))) < 1e-12
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == 0.1
    lin = [nf.optim.warmup_linear(s, **kw) for s in range(120)]
    assert abs(lin[60] - 0.55) < 1e-12
    p = nf.tensor([1.0], requires_grad=True)
    opt = nf.optim.AdamW([p], lr=0.5)
    sched = nf.optim.LRScheduler(opt, nf.optim.warmup_cosine, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    assert opt.param_groups[0]["lr"] == 0.25
    assert sched.step() == 0.5


def test_a_training_loop_reduces_the_loss():
    nf.manual_seed(0)
    x = nf.randn(64, 3)
    y = x @ nf.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = nf.nn.Linear(3, 1)
    opt = nf.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = nf.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * first, (first, loss.item())
    assert_close(model.weight, [[1.0, -2.0, 0.5]], atol=1e-2)
