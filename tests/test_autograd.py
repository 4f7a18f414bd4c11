"""Autograd from Python: a hand-derived expression, then one row per op — a finite-difference gradcheck
(f64 accumulation) plus a forward comparison with an independent numpy formula."""

import numpy as np
import pytest

import nanofrontier as nf
import nanofrontier.functional as F
from nanofrontier.testing import assert_close, gradcheck


def test_hand_derived_expression():
    # f(a, b) = tanh(a*b + b) summed; df/da = (1 - tanh²(ab+b)) * b, df/db = (1 - tanh²(ab+b)) * (a + 1)
    a0, b0 = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.3, -0.2])
    a, b = nf.tensor(a0, requires_grad=True), nf.tensor(b0, requires_grad=True)
    (a * b + b).tanh().sum().backward()
    t = np.tanh(a0 * b0 + b0)
    assert_close(a.grad, (1 - t**2) * b0, atol=1e-6)
    assert_close(b.grad, (1 - t**2) * (a0 + 1), atol=1e-6)


def test_grad_accumulates_and_zero_grad_resets():
    x = nf.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert_close(x.grad, [3 + 2, 3 + 4])
    x.zero_grad()
    assert x.grad is None


def test_no_grad_and_detach():
    x = nf.tensor([1.0], requires_grad=True)
    with nf.no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert nf.is_grad_enabled()
    z = (x * 2).detach()
    assert not z.requires_grad and z.is_leaf

    @nf.no_grad()
    def f(v):
        return v * v

    assert not f(x).requires_grad


def test_retain_graph_allows_a_second_backward():
    x = nf.tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert_close(x.grad, [8.0])


R = np.random.default_rng(0)


def _u(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, shape).astype(np.float32)


def _pos(*shape):
    return _u(*shape, lo=0.5, hi=2.0)


def _away_from_zero(*shape):
    x = _u(*shape)
    return np.where(np.abs(x) < 0.2, 0.5, x).astype(np.float32)


def _away_from(x, *points):
    """x with every value within 0.05 of a kink moved 0.1 past it (no finite difference straddles one)."""
    for p in points:
        x = np.where(np.abs(x - p) < 0.05, p + 0.1, x)
    return x.astype(np.float32)


def _whole(*shape):
    """Whole numbers: against half-way numbers every pair is at least 0.5 apart (no ties in a gradcheck)."""
    return np.round(_u(*shape, lo=-4, hi=4)).astype(np.float32)


# the far tails and the middle, for the stable primitives
_EXTREME = np.array([-100.0, -30.0, -0.3, 0.4, 30.0, 100.0], dtype=np.float32)


def _np_softmax(x, d):
    e = np.exp(x - x.max(d, keepdims=True))
    return e / e.sum(d, keepdims=True)


def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _np_ce(x, t, ignore=-100):
    lp = np.log(_np_softmax(x.astype(np.float64), -1)).reshape(-1, x.shape[-1])
    t = np.asarray(t).reshape(-1)
    keep = t != ignore
    return -lp[np.arange(len(t))[keep], t[keep]].mean()


def _np_attention(q, k, v, causal=True):
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        tq, tk = s.shape[-2:]
        s = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq), s, -np.inf)
    return _np_softmax(s, -1) @ v


def _np_layer_norm(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _np_rope(x, layout, theta=10000.0, offset=0):  # x (B, T, H, D), sequence on dim 1
    d = x.shape[-1]
    ang = (offset + np.arange(x.shape[1]))[:, None] * theta ** (-2 * np.arange(d // 2) / d)
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    a, b = (x[..., 0::2], x[..., 1::2]) if layout == "interleaved" else (x[..., : d // 2], x[..., d // 2:])
    ra, rb = a * c - b * s, a * s + b * c
    out = np.empty_like(x)
    if layout == "interleaved":
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : d // 2], out[..., d // 2:] = ra, rb
    return out


TARGETS = np.array([[0, 4, 2], [-100, 1, 3]])
IDS = np.array([[3, 1, 3], [0, 0, 2]])
MASK = np.array([[1.0, 0.0, 0.0, 1.0]], dtype=np.float32)

# name: (nanofrontier fn, numpy reference, input arrays)
OPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, [_u(2, 3), _u(3)]),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, [_u(2, 1, 3), _u(4, 1)]),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, [_u(2, 3), _u(2, 3)]),
    "div": (lambda a, b: a / b, lambda a, b: a / b, [_u(2, 3), _pos(1, 3)]),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b, [_pos(2, 3), _u(2, 3)]),
    "pow_scalar": (lambda a: a ** 3, lambda a: a ** 3, [_u(4)]),
    "rdiv": (lambda a: 2.0 / a, lambda a: 2.0 / a, [_pos(3)]),
    "neg": (lambda a: -a, lambda a: -a, [_u(3, 2)]),
    "exp": (lambda a: a.exp(), np.exp, [_u(3, 2)]),
    "log": (lambda a: a.log(), np.log, [_pos(3, 2)]),
    "sqrt": (lambda a: a.sqrt(), np.sqrt, [_pos(3, 2)]),
    "tanh": (lambda a: a.tanh(), np.tanh, [_u(3, 2)]),
    "relu": (lambda a: a.relu(), lambda a: np.maximum(a, 0), [_away_from_zero(3, 4)]),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), [_u(3, 2)]),
    "abs": (lambda a: abs(a), np.abs, [_away_from_zero(5)]),
    "clamp": (lambda a: a.clamp(-0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7),
              [_away_from(_u(3, 4), -0.5, 0.7)]),
    "clamp_min_only": (lambda a: a.clamp(min=-0.2), lambda a: np.maximum(a, -0.2),
                       [_away_from(_u(2, 5), -0.2)]),
    "clamp_max_only": (lambda a: a.clamp(max=0.3), lambda a: np.minimum(a, 0.3), [_away_from(_u(5), 0.3)]),
    "clamp_extreme": (lambda a: a.clamp(-1.0, 1.0), lambda a: np.clip(a, -1.0, 1.0), [_EXTREME]),
    "maximum": (lambda a, b: nf.maximum(a, b), np.maximum, [_whole(2, 3), _whole(3) + 0.5]),
    "minimum": (lambda a, b: nf.minimum(a, b), np.minimum, [_whole(4, 1) + 0.5, _whole(1, 3)]),
    "maximum_extreme": (lambda a, b: nf.maximum(a, b), np.maximum, [_EXTREME, -_EXTREME[::-1] + 0.5]),
    "log_sigmoid": (lambda a: F.log_sigmoid(a), lambda a: -np.logaddexp(0, -a), [_u(3, 4, lo=-8, hi=8)]),
    "log_sigmoid_extreme": (lambda a: F.log_sigmoid(a), lambda a: -np.logaddexp(0, -a), [_EXTREME]),
    "softplus": (lambda a: F.softplus(a), lambda a: np.logaddexp(0, a), [_u(3, 4, lo=-8, hi=8)]),
    "softplus_beta_threshold": (lambda a: F.softplus(a, beta=2.0, threshold=3.0),
                                lambda a: np.where(2 * a > 3, a, np.logaddexp(0, 2 * a) / 2),
                                [_away_from(_u(2, 5, lo=-3, hi=3), 1.5)]),
    "softplus_extreme": (lambda a: F.softplus(a), lambda a: np.logaddexp(0, a), [_EXTREME]),
    "sum_all": (lambda a: a.sum(), lambda a: a.sum(), [_u(2, 3)]),
    "sum_dim_keepdim": (lambda a: a.sum(1, keepdim=True), lambda a: a.sum(1, keepdims=True), [_u(2, 3, 2)]),
    "sum_dims": (lambda a: a.sum((0, 2)), lambda a: a.sum((0, 2)), [_u(2, 3, 2)]),
    "mean": (lambda a: a.mean(-1), lambda a: a.mean(-1), [_u(2, 5)]),
    "mean_keepdim": (lambda a: a.mean(0, keepdim=True), lambda a: a.mean(0, keepdims=True), [_u(3, 2)]),
    "max_dim": (lambda a: a.max(0), lambda a: a.max(0), [np.array([[1, 5, 2], [4, 0, 3]], np.float32)]),
    "max_dim_keepdim": (lambda a: a.max(-1, keepdim=True), lambda a: a.max(-1, keepdims=True),
                        [np.array([[1, 5, 2], [4, 0, 3]], np.float32)]),
    "max_all": (lambda a: a.max(), lambda a: a.max(), [np.array([[1, 5, 2], [4, 0, 3]], np.float32)]),
    "reshape": (lambda a: a.reshape(3, -1) * 1.5, lambda a: a.reshape(3, -1) * 1.5, [_u(2, 3, 2)]),
    "permute": (lambda a: a.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), [_u(2, 3, 4)]),
    "transpose": (lambda a: a.transpose(0, 1), lambda a: a.T, [_u(3, 4)]),
    "narrow": (lambda a: a.narrow(1, 1, 2), lambda a: a[:, 1:3], [_u(2, 4)]),
    "getitem": (lambda a: a[1:, ::2], lambda a: a[1:, ::2], [_u(3, 5)]),
    "getitem_int": (lambda a: a[:, 2], lambda a: a[:, 2], [_u(3, 5)]),
    "cat": (lambda a, b: nf.cat([a, b], 1), lambda a, b: np.concatenate([a, b], 1), [_u(2, 2), _u(2, 3)]),
    "stack": (lambda a, b: nf.stack([a, b], 0), lambda a, b: np.stack([a, b], 0), [_u(2, 3), _u(2, 3)]),
    "expand": (lambda a: nf.expand(a, [4, 3]), lambda a: np.broadcast_to(a, (4, 3)), [_u(1, 3)]),
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [_u(3, 4), _u(4, 2)]),
    "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [_u(2, 1, 3, 4), _u(3, 4, 2)]),
    "matmul_vec": (lambda a, b: a @ b, lambda a, b: a @ b, [_u(4), _u(4, 2)]),
    "softmax": (lambda a: a.softmax(-1), lambda a: _np_softmax(a, -1), [_u(2, 5)]),
    "softmax_dim0": (lambda a: a.softmax(0), lambda a: _np_softmax(a, 0), [_u(3, 2)]),
    "log_softmax": (lambda a: a.log_softmax(-1), lambda a: np.log(_np_softmax(a, -1)), [_u(2, 5)]),
    "cross_entropy": (lambda a: F.cross_entropy(a, TARGETS), lambda a: _np_ce(a, TARGETS), [_u(2, 3, 5)]),
    "gelu": (lambda a: a.gelu(), _np_gelu, [_u(3, 4)]),
    "silu": (lambda a: a.silu(), lambda a: a / (1 + np.exp(-a)), [_u(3, 4)]),
    "embedding": (lambda w: F.embedding(w, IDS), lambda w: w[IDS], [_u(4, 3)]),
    "index_select": (lambda a: F.index_select(a, 1, [2, 0, 2]), lambda a: a[:, [2, 0, 2]], [_u(2, 3)]),
    "masked_fill": (lambda a: F.masked_fill(a, MASK, -1.0), lambda a: np.where(MASK != 0, -1.0, a), [_u(3, 4)]),
    "where": (lambda a, b: nf.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b), [_away_from_zero(2, 3), _u(3)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), lambda x, w, b: x @ w.T + b, [_u(2, 3, 4), _u(5, 4), _u(5)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), _np_layer_norm, [_u(3, 6), _u(6), _u(6)]),
    "rms_norm": (lambda x, w: F.rms_norm(x, w),
                 lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w, [_u(3, 6), _u(6)]),
    "swiglu": (lambda g, u: F.swiglu(g, u), lambda g, u: g / (1 + np.exp(-g)) * u, [_u(3, 4), _u(3, 4)]),
    "rope_interleaved": (lambda x: F.rope(x, seq_dim=1, pos_offset=3), lambda x: _np_rope(x, "interleaved", offset=3),
                         [_u(2, 5, 2, 6)]),
    "rope_half": (lambda x: F.rope(x, seq_dim=1, layout="half"), lambda x: _np_rope(x, "half"), [_u(1, 4, 3, 8)]),
    "attention_mha": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), _np_attention,
                      [_u(2, 2, 5, 4), _u(2, 2, 5, 4), _u(2, 2, 5, 4)]),
    "attention_gqa_kv_cache": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), _np_attention,
                               [_u(1, 4, 2, 4), _u(1, 2, 6, 4), _u(1, 2, 6, 4)]),
    "attention_not_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False),
                             lambda q, k, v: _np_attention(q, k, v, causal=False), [_u(1, 2, 3, 4), _u(1, 2, 5, 4), _u(1, 2, 5, 4)]),
    "token_logprobs": (lambda a: F.token_logprobs(a, TARGETS),  # (B, T, V) logits, (B, T) targets -> (B, T)
                       lambda a: np.where(TARGETS >= 0, np.take_along_axis(
                           np.log(_np_softmax(a, -1)), np.maximum(TARGETS, 0)[..., None], -1)[..., 0], 0.0),
                       [_u(2, 3, 5)]),
    "mse_loss": (lambda a, b: F.mse_loss(a, b), lambda a, b: ((a - b) ** 2).mean(), [_u(4), _u(4)]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_forward_matches_numpy_and_gradcheck_passes(name):
    fn, ref, inputs = OPS[name]
    got = fn(*[nf.tensor(x) for x in inputs])
    want = np.asarray(ref(*[x.astype(np.float64) for x in inputs]), dtype=np.float64)
    # shapes strictly (no reshaping of the reference): a wrong output shape, e.g. a lost keepdim, fails here
    assert tuple(got.shape) == want.shape, f"{name}: shape {tuple(got.shape)}, numpy gives {want.shape}"
    assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
    gradcheck(fn, inputs)


def test_attention_weights_are_the_softmax_the_output_uses():
    q, k = _u(1, 2, 4, 8), _u(1, 2, 4, 8)
    w = F.attention_weights(q, k).numpy()
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(8)
    s = np.where(np.tril(np.ones((4, 4), bool)), s, -np.inf)
    assert_close(w, _np_softmax(s, -1), atol=1e-6)
    assert np.all(np.triu(w[0, 0], 1) == 0)


def test_dropout_gradient_uses_the_same_mask():
    x = nf.tensor(_u(50), requires_grad=True)
    nf.manual_seed(3)
    y = F.dropout(x, p=0.3)
    y.sum().backward()
    kept = y.numpy() != 0
    assert_close(x.grad, np.where(kept, 1 / 0.7, 0.0), atol=1e-6)
    nf.manual_seed(3)
    assert_close(F.dropout(x, p=0.3), y)  # same seed, same mask
    # not training: the input itself, bit for bit, and a gradient of exactly one (no mask, no 1/(1-p))
    x.zero_grad()
    y = F.dropout(x, p=0.3, training=False)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    (y * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(50, 2.0, np.float32))


def test_stable_primitives_follow_ieee_at_inf_and_nan():
    inf, nan = np.inf, np.nan
    x = nf.tensor([-inf, -100.0, 100.0, inf, nan], requires_grad=True)
    ls = F.log_sigmoid(x)
    # log(sigmoid(x)) is -inf at -100 in float32; the stable form is exact
    assert np.isneginf(x.sigmoid().log().numpy()[1])
    np.testing.assert_array_equal(ls.numpy()[:4], np.float32([-inf, -100.0, -np.exp(-100.0), 0.0]))
    ls.sum().backward()
    g = x.grad.numpy()
    # e^-100 is a float32 subnormal (spacing 1.4e-45): within one step of it
    np.testing.assert_allclose(g[:4], [1.0, 1.0, np.exp(-100.0), 0.0], rtol=0, atol=1.5e-45)
    assert g[2] > 0
    assert np.isnan(ls.numpy()[4]) and np.isnan(g[4])
    sp = F.softplus(x).numpy()
    np.testing.assert_array_equal(sp[:4], np.float32([0.0, np.exp(-100.0), 100.0, inf]))
    assert np.isnan(sp[4])
    c = x.clamp(-1.0, 1.0).numpy()
    np.testing.assert_array_equal(c[:4], [-1.0, -1.0, 1.0, 1.0])
    assert np.isnan(c[4])
    b = nf.tensor([0.0, 0.0, 0.0, 0.0, 0.0])
    for f, ref in [(nf.maximum, np.maximum), (nf.minimum, np.minimum)]:
        got, want = f(x, b).numpy(), ref(x.numpy(), b.numpy())
        np.testing.assert_array_equal(got, want)  # nan where either side is nan, as numpy
        assert got.shape == want.shape


def test_gradients_at_ties_and_clamp_bounds():
    a, b = nf.tensor([1.0, 2.0, 3.0], requires_grad=True), nf.tensor(2.0, requires_grad=True)
    nf.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 0.5, 1.0])  # a tie splits the gradient
    assert b.grad.numpy().shape == () and float(b.grad.numpy()) == 1.5
    x = nf.tensor([-1.0, 0.0, 1.0, 1.5], requires_grad=True)
    x.clamp(-1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0])  # bounds pass the gradient


def test_stable_primitives_refuse_bad_arguments():
    x = nf.tensor([0.0, 1.0])
    with pytest.raises(nf.InvalidArgumentError, match="min .* greater than max"):
        x.clamp(1.0, -1.0)
    with pytest.raises(nf.InvalidArgumentError, match="min must not be nan"):
        x.clamp(min=float("nan"))
    with pytest.raises(nf.InvalidArgumentError, match="at least one of min and max"):
        x.clamp()
    with pytest.raises(TypeError):
        x.clamp(min="0")
    with pytest.raises(TypeError, match="tensor bounds are not supported"):
        x.clamp(min=nf.tensor([0.0]))
    # numpy scalars and ints are numbers
    np.testing.assert_array_equal(x.clamp(min=np.float64(0.5), max=1).numpy(), [0.5, 1.0])
    for beta in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(nf.InvalidArgumentError, match="beta must be finite and > 0"):
            F.softplus(x, beta=beta)
    with pytest.raises(nf.InvalidArgumentError, match="threshold must not be nan"):
        F.softplus(x, threshold=float("nan"))
    with pytest.raises(TypeError):
        F.softplus(x, beta="2")
    with pytest.raises(nf.ShapeError, match="maximum: cannot broadcast"):
        nf.maximum(nf.zeros(2, 3), nf.zeros(4))
    with pytest.raises(TypeError):
        nf.minimum(x, "a")
    # beta and threshold take effect
    assert not np.allclose(F.softplus(x, beta=2.0).numpy(), F.softplus(x).numpy())
    assert F.softplus(x, threshold=0.5).numpy()[1] == 1.0
