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


# ---- per-group settings: each one takes effect in its group (numpy references of torch's update rules) ----
def _np_adamw(p, grads, lr, betas, eps, weight_decay):
    """AdamW in float64 over a list of gradients; returns the parameter after each step."""
    p, (b1, b2) = p.astype(np.float64), betas
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        g = g.astype(np.float64)
        p = p * (1 - lr * weight_decay)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(p)
    return out


def _np_sgd(p, grads, lr, momentum, dampening, nesterov, weight_decay):
    """SGD in float64 (torch's pseudo-code); returns the parameter after each step."""
    p, buf, out = p.astype(np.float64), None, []
    for g in grads:
        d = g.astype(np.float64) + weight_decay * p
        if momentum != 0:
            buf = d if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
        out.append(p)
    return out


def _grad_seq(n, shape=(3, 4), seed=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def _run(make_opt, p0, grads):
    """Parameters after each step of an optimizer built by ``make_opt(param)``."""
    p = nf.tensor(p0, requires_grad=True)
    opt, out = make_opt(p), []
    for g in grads:
        p.grad = g
        opt.step()
        out.append(p.numpy())
    return out


ADAMW_DEFAULTS = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
SGD_DEFAULTS = dict(lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)
# (optimizer, the one setting put in the group, reference settings it needs besides the defaults)
GROUP_SETTINGS = [
    ("AdamW", {"lr": 0.05}, {}),
    ("AdamW", {"betas": (0.0, 0.5)}, {}),
    ("AdamW", {"betas": (0.5, 0.9)}, {}),
    ("AdamW", {"eps": 0.5}, {}),
    ("AdamW", {"weight_decay": 5.0}, {}),
    ("SGD", {"lr": 0.05}, {}),
    ("SGD", {"momentum": 0.9}, {}),
    ("SGD", {"momentum": 0.8, "dampening": 0.5}, {}),
    ("SGD", {"nesterov": True}, {"momentum": 0.9}),  # nesterov needs a momentum: the constructor's
    ("SGD", {"weight_decay": 0.5}, {}),
]


@pytest.mark.parametrize("opt_name,setting,base", GROUP_SETTINGS,
                         ids=[f"{o}-{'-'.join(s)}" for o, s, _ in GROUP_SETTINGS])
def test_each_group_setting_takes_effect(opt_name, setting, base):
    cls, ref, defaults = {"AdamW": (nf.optim.AdamW, _np_adamw, ADAMW_DEFAULTS),
                          "SGD": (nf.optim.SGD, _np_sgd, SGD_DEFAULTS)}[opt_name]
    p0, grads = _params()[0], _grad_seq(4)
    kw = {**defaults, **base}
    got = _run(lambda p: cls([{"params": [p], **setting}], **kw), p0, grads)
    want = ref(p0, grads, **{**kw, **setting})
    plain = ref(p0, grads, **kw)  # the constructor's value: what today's code gives
    for t, (g, w) in enumerate(zip(got, want), 1):
        assert_close(g, w, atol=1e-6, rtol=1e-5, msg=f"{opt_name} {setting} step {t}")
    # (Adam's first step is lr·sign(g) whatever the betas, so compare where the runs have parted)
    assert np.abs(want[-1] - plain[-1]).max() > 1e-3, f"{setting} barely changes the update: could not fail"


def test_per_group_betas_are_not_ignored():
    # the reported bug: these betas used to give bit-identical parameters to the default ones
    p0, grads = _params()[0], _grad_seq(3)
    default = _run(lambda p: nf.optim.AdamW([{"params": [p]}], lr=0.1), p0, grads)[-1]
    own = _run(lambda p: nf.optim.AdamW([{"params": [p], "betas": (0.0, 0.5)}], lr=0.1), p0, grads)[-1]
    assert np.abs(own - default).max() > 1e-2, "betas set in the group made no difference"
    assert_close(own, _np_adamw(p0, grads, 0.1, (0.0, 0.5), 1e-8, 0.01)[-1], atol=1e-6, rtol=1e-5)


def test_two_groups_with_different_settings_in_one_optimizer():
    (w0, b0), grads = _params(), [_grads(t) for t in range(5)]
    gw, gb = [g[0] for g in grads], [g[1] for g in grads]
    w, b = nf.tensor(w0, requires_grad=True), nf.tensor(b0, requires_grad=True)
    opt = nf.optim.AdamW([{"params": [w], "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.1},
                          {"params": [b], "lr": 0.03, "betas": (0.0, 0.99), "weight_decay": 0.0}], lr=0.01)
    assert opt.param_groups[1]["eps"] == 1e-8 and opt.param_groups[0]["lr"] == 0.01  # defaults fill the rest
    ref_w = _np_adamw(w0, gw, 0.01, (0.5, 0.9), 1e-3, 0.1)
    ref_b = _np_adamw(b0, gb, 0.03, (0.0, 0.99), 1e-8, 0.0)
    for t in range(5):
        w.grad, b.grad = gw[t], gb[t]
        opt.step()
        assert_close(w, ref_w[t], atol=1e-6, rtol=1e-5, msg=f"AdamW group 0 step {t}")
        assert_close(b, ref_b[t], atol=1e-6, rtol=1e-5, msg=f"AdamW group 1 step {t}")

    w, b = nf.tensor(w0, requires_grad=True), nf.tensor(b0, requires_grad=True)
    opt = nf.optim.SGD([{"params": [w], "momentum": 0.9, "nesterov": True},
                        {"params": [b], "lr": 0.2, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.1}],
                       lr=0.05)
    ref_w, ref_b = _np_sgd(w0, gw, 0.05, 0.9, 0.0, True, 0.0), _np_sgd(b0, gb, 0.2, 0.5, 0.3, False, 0.1)
    for t in range(5):
        w.grad, b.grad = gw[t], gb[t]
        opt.step()
        assert_close(w, ref_w[t], atol=1e-6, rtol=1e-5, msg=f"SGD group 0 step {t}")
        assert_close(b, ref_b[t], atol=1e-6, rtol=1e-5, msg=f"SGD group 1 step {t}")


def test_a_setting_changed_between_steps_takes_effect():
    p0, grads = _params()[0], _grad_seq(2)
    p = nf.tensor(p0, requires_grad=True)
    opt = nf.optim.SGD([p], lr=0.1)
    p.grad = grads[0]
    opt.step()
    opt.param_groups[0]["weight_decay"] = 0.5
    p.grad = grads[1]
    opt.step()
    want = _np_sgd(p0, grads[:1], 0.1, 0.0, 0.0, False, 0.0)[0]
    want = want - 0.1 * (grads[1] + 0.5 * want)
    assert_close(p, want, atol=1e-6)


def test_unknown_and_bad_group_settings_are_refused():
    a = nf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(nf.InvalidArgumentError, match="unknown setting 'momentum'"):
        nf.optim.AdamW([{"params": [a], "momentum": 0.9}])
    with pytest.raises(nf.InvalidArgumentError, match="unknown setting 'betas'"):
        nf.optim.SGD([{"params": [a], "betas": (0.9, 0.99)}])
    with pytest.raises(nf.InvalidArgumentError, match="unknown setting 'lr_decay'"):
        nf.optim.SGD([{"params": [a], "lr_decay": 0.9}])
    with pytest.raises(nf.InvalidArgumentError, match=r"invalid beta1 1.5 in group 1"):
        nf.optim.AdamW([{"params": [a]}, {"params": [nf.zeros(1)], "betas": (1.5, 0.9)}])
    with pytest.raises(nf.InvalidArgumentError, match="must be two numbers"):
        nf.optim.AdamW([{"params": [a], "betas": (0.9, 0.99, 0.1)}])
    with pytest.raises(nf.InvalidArgumentError, match="nesterov momentum requires a momentum > 0"):
        nf.optim.SGD([{"params": [a], "nesterov": True}])
    with pytest.raises(TypeError, match="'eps' of group 0 must be a number"):
        nf.optim.AdamW([{"params": [a], "eps": "small"}])
    with pytest.raises(TypeError, match="'nesterov' of group 0 must be a bool"):
        nf.optim.SGD([{"params": [a], "momentum": 0.9, "nesterov": "yes"}])
    # a key added after construction is refused at the step, before anything moves
    opt = nf.optim.AdamW([a], lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    a.grad = [1.0, 1.0]
    with pytest.raises(nf.InvalidArgumentError, match="group 0 has an unknown setting 'momentum'"):
        opt.step()
    assert_close(a, [1.0, 2.0])
    assert opt._core.get_state([a]) == [None]


def test_state_dict_round_trips_group_settings():
    def make(p, q, **kw):
        return nf.optim.AdamW([{"params": [p], **kw}, {"params": [q]}], lr=0.01)

    (w0, b0), grads = _params(), [_grads(t) for t in range(4)]
    w, b = nf.tensor(w0, requires_grad=True), nf.tensor(b0, requires_grad=True)
    a = make(w, b, lr=0.05, betas=(0.0, 0.5), eps=1e-3, weight_decay=0.2)
    for g in grads[:2]:
        _set_grads([w, b], g)
        a.step()
    sd = a.state_dict()
    w2, b2 = nf.tensor(w.numpy(), requires_grad=True), nf.tensor(b.numpy(), requires_grad=True)
    c = make(w2, b2)  # built with the defaults: everything must come from the state dict
    c.load_state_dict(sd)
    assert [{k: v for k, v in g.items() if k != "params"} for g in c.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in a.param_groups]
    assert c.param_groups[0]["betas"] == (0.0, 0.5) and c.param_groups[0]["lr"] == 0.05
    for g in grads[2:]:
        _set_grads([w, b], g)
        _set_grads([w2, b2], g)
        a.step()
        c.step()
    np.testing.assert_array_equal(w2.numpy(), w.numpy())  # same settings, same state: bit-identical
    np.testing.assert_array_equal(b2.numpy(), b.numpy())
    # a bad saved setting is refused before anything is loaded
    d = make(nf.tensor(w0, requires_grad=True), nf.tensor(b0, requires_grad=True))
    bad = {**sd, "param_groups": [{**sd["param_groups"][0], "momentum": 0.9}, sd["param_groups"][1]]}
    with pytest.raises(nf.InvalidArgumentError, match="unknown setting 'momentum'"):
        d.load_state_dict(bad)
    assert d.param_groups[0]["lr"] == 0.01 and d.state_dict()["state"] == [None, None]


def test_sgd_state_dict_round_trips_group_settings():
    p0, grads = _params()[0], _grad_seq(4)
    p = nf.tensor(p0, requires_grad=True)
    a = nf.optim.SGD([{"params": [p], "momentum": 0.9, "dampening": 0.1}], lr=0.1)
    for g in grads[:2]:
        p.grad = g
        a.step()
    q = nf.tensor(p.numpy(), requires_grad=True)
    c = nf.optim.SGD([q], lr=0.5)
    c.load_state_dict(a.state_dict())
    assert c.param_groups[0]["momentum"] == 0.9 and c.param_groups[0]["dampening"] == 0.1
    for g in grads[2:]:
        p.grad, q.grad = g, g
        a.step()
        c.step()
    np.testing.assert_array_equal(q.numpy(), p.numpy())
    assert_close(p, _np_sgd(p0, grads, 0.1, 0.9, 0.1, False, 0.0)[-1], atol=1e-6)


def test_zero_grad_clears_what_a_backward_wrote():
    x = nf.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = nf.optim.SGD([x], lr=0.1)
    (x * x).sum().backward()
    assert_close(x.grad, [2.0, -4.0, 6.0])
    opt.zero_grad()
    assert x.grad is None
    opt.step()  # no grad: nothing moves
    assert_close(x, [1.0, -2.0, 3.0])
    (x * 3).sum().backward()  # starts from zero, not from 2x
    assert_close(x.grad, [3.0, 3.0, 3.0])
