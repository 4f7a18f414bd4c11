"""The Python surface of Tensor: construction and dtype rules, numpy round trips, printing, operators
(reflected ones too), indexing, and the error classes for every kind of bad input."""

import math

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.testing import assert_close


# ---------------------------------------------------------------- construction and dtype rules
def test_from_lists_and_numbers():
    t = nf.tensor([[1, 2, 3], [4, 5, 6]])
    assert t.shape == (2, 3) and t.ndim == 2 and t.numel() == 6 and len(t) == 2
    assert t.dtype == "float32"
    assert t.numpy().dtype == np.float32
    assert nf.tensor(2.5).shape == () and nf.tensor(2.5).item() == 2.5
    assert nf.tensor([True, False]).tolist() == [1.0, 0.0]


def test_float64_is_rounded_to_nearest_float32():
    x = np.array([0.1, 1e-50, 1e39, -1e39, 16777217.0], dtype=np.float64)
    t = nf.tensor(x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(t.numpy(), x.astype(np.float32))
    assert t.numpy()[2] == np.inf and t.numpy()[3] == -np.inf


def test_numpy_round_trip_any_strides():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for view in (a, a.transpose(2, 0, 1), a[:, ::-1, ::2], np.asfortranarray(a)):
        np.testing.assert_array_equal(nf.tensor(view).numpy(), view)
    t = nf.tensor(a)
    np.testing.assert_array_equal(np.asarray(t), a)
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    # the tensor owns a copy: changing the source later changes nothing
    a[0, 0, 0] = 100
    assert t.numpy()[0, 0, 0] == 0


@pytest.mark.parametrize(
    "bad", [np.array([1 + 2j]), ["a", "b"], np.array(["x"]), [object()], [[1, 2], [3]], {"a": 1}]
)
def test_wrong_dtypes_raise_type_error(bad):
    with pytest.raises(TypeError):
        nf.tensor(bad)


def test_index_arguments_must_be_integers():
    w = nf.randn(5, 3)
    with pytest.raises(TypeError, match="integers"):
        nf.functional.embedding(w, [0.5, 1.0])
    with pytest.raises(TypeError):
        nf.functional.cross_entropy(nf.randn(2, 3), np.array([0.0, 1.5]))
    # whole-number tensors are accepted as indices
    out = nf.functional.embedding(w, nf.tensor([4, 0]))
    assert_close(out, w.numpy()[[4, 0]])


def test_repr_is_numpy_like():
    t = nf.tensor([[1.0, -2.5], [3.0, 4.0]], requires_grad=True)
    assert repr(t) == "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]], requires_grad=True)"
    assert "grad_fn=<mul>" in repr(t * 2)
    assert "..." in repr(nf.zeros(100))
    assert repr(nf.zeros(0, 3)) == "tensor([], shape=(0, 3))"


# ---------------------------------------------------------------- operators vs numpy
def test_operators_and_reflected_operators_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 2, (3, 4)).astype(np.float32)
    b = rng.uniform(0.5, 2, (4,)).astype(np.float32)
    A, B = nf.tensor(a), nf.tensor(b)
    cases = {
        "A+B": (A + B, a + b), "A-B": (A - B, a - b), "A*B": (A * B, a * b), "A/B": (A / B, a / b),
        "A**B": (A ** B, a ** b), "2+A": (2 + A, 2 + a), "2-A": (2 - A, 2 - a), "2*A": (2 * A, 2 * a),
        "2/A": (2 / A, 2 / a), "2**A": (2 ** A, 2 ** a), "A**2": (A ** 2, a ** 2), "-A": (-A, -a),
        "abs(-A)": (abs(-A), a), "np+A": (b + A, b + a), "np*A": (b * A, b * a), "A@np": (A @ a.T, a @ a.T),
        "np@A": (a.T @ A, a.T @ a), "A@A.T": (A @ A.T, a @ a.T),
    }
    for name, (got, want) in cases.items():
        assert isinstance(got, nf.Tensor), name
        assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


def test_comparisons_give_masks():
    a = nf.tensor([1.0, 2.0, 3.0])
    assert (a > 1.5).tolist() == [0.0, 1.0, 1.0]
    assert (a == nf.tensor([1.0, 0.0, 3.0])).tolist() == [1.0, 0.0, 1.0]
    assert (a <= 2).tolist() == [1.0, 1.0, 0.0]
    assert ((a > 1.5).mean().item() - 2 / 3) < 1e-6
    assert hash(a) != hash(nf.tensor([1.0, 2.0, 3.0]))  # hashable by identity, usable in sets


def test_methods_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 2.0, (2, 3, 4)).astype(np.float32)
    X = nf.tensor(x)
    assert_close(X.sum(), x.sum(), rtol=1e-6)
    assert_close(X.sum(dim=1), x.sum(1), rtol=1e-6)
    assert_close(X.sum(dim=(0, 2), keepdim=True), x.sum((0, 2), keepdims=True), rtol=1e-6)
    assert_close(X.mean(-1), x.mean(-1), rtol=1e-6)
    assert_close(X.max(1), x.max(1))
    np.testing.assert_array_equal(X.argmax(-1), x.argmax(-1))
    assert X.argmax() == int(x.argmax())
    assert_close(X.exp(), np.exp(x), rtol=1e-6)
    assert_close(X.log(), np.log(x), atol=1e-6)
    assert_close(X.sqrt(), np.sqrt(x), rtol=1e-6)
    assert_close(X.tanh(), np.tanh(x), atol=1e-6)
    assert_close(X.sigmoid(), 1 / (1 + np.exp(-x)), atol=1e-6)
    assert_close((X - 1).relu(), np.maximum(x - 1, 0))
    e = np.exp(x - x.max(-1, keepdims=True))
    assert_close(X.softmax(-1), e / e.sum(-1, keepdims=True), atol=1e-6)
    assert_close(X.log_softmax(1), np.log(np.exp(x) / np.exp(x).sum(1, keepdims=True)), atol=1e-5)
    assert_close(X.reshape(6, -1), x.reshape(6, -1))
    assert_close(X.reshape((4, 6)), x.reshape(4, 6))
    assert_close(X.permute(2, 0, 1), x.transpose(2, 0, 1))
    assert_close(X.transpose(0, 2), x.swapaxes(0, 2))
    assert_close(X.mT, x.swapaxes(-1, -2))
    assert_close(X[0].T, x[0].T)
    assert_close(X.narrow(2, 1, 2), x[:, :, 1:3])
    assert_close(X.unsqueeze(1), x[:, None])
    assert_close(X.unsqueeze(-1), x[..., None])
    assert_close(X.unsqueeze(0).squeeze(), x)
    assert_close(X.flatten(1), x.reshape(2, -1))
    assert_close(nf.cat([X, X], dim=1), np.concatenate([x, x], 1))
    assert_close(nf.stack([X, X], dim=-1), np.stack([x, x], -1))
    assert_close(nf.where(X > 1, X, 0.0), np.where(x > 1, x, 0.0))


@pytest.mark.parametrize(
    "key",
    [0, -1, (1, 2), slice(None), slice(1, None), slice(None, None, 2), (slice(None), 1), (Ellipsis, 0),
     (0, Ellipsis, slice(1, 3)), (None, 0), (slice(None), None, slice(None)), [2, 0, 0], (0, [2, 1]),
     slice(-2, None), slice(10, 20), (1, -1, 2)],
)
def test_getitem_matches_numpy(key):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    if isinstance(key, list):
        want, got = x[np.array(key) % 2], nf.tensor(x)[[k % 2 for k in key]]
    else:
        want, got = x[key], nf.tensor(x)[key]
    assert got.shape == want.shape
    assert_close(got, want)


def test_getitem_errors_and_no_setitem():
    t = nf.zeros(2, 3)
    with pytest.raises(IndexError, match="out of bounds"):
        t[5]
    with pytest.raises(IndexError, match="too many indices"):
        t[0, 0, 0]
    with pytest.raises(ValueError):
        t[::-1]
    with pytest.raises(TypeError, match="item assignment"):
        t[0] = 1.0


# ---------------------------------------------------------------- errors: bad input never panics
BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b,
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_shape_mismatch_in_every_binary_op(name):
    with pytest.raises(nf.ShapeError, match=rf"{name}: cannot broadcast \(2, 3\) with \(4,\)"):
        BINARY[name](nf.zeros(2, 3), nf.zeros(4))
    # still a ValueError for code that catches builtins
    with pytest.raises(ValueError):
        BINARY[name](nf.zeros(2, 3), nf.zeros(4))


def test_matmul_shape_errors():
    with pytest.raises(nf.ShapeError, match="inner dimensions"):
        nf.zeros(2, 3) @ nf.zeros(4, 5)
    with pytest.raises(nf.ShapeError):
        nf.zeros(2, 2, 3) @ nf.zeros(3, 3, 4)
    with pytest.raises(nf.ShapeError):
        nf.tensor(1.0) @ nf.zeros(2)


def test_out_of_range_indices_and_dims():
    with pytest.raises(nf.OutOfRangeError, match="dim 2 is out of range"):
        nf.zeros(2, 3).softmax(2)
    with pytest.raises(IndexError):
        nf.zeros(2, 3).sum(dim=5)
    with pytest.raises(IndexError):
        nf.functional.embedding(nf.zeros(4, 2), [0, 4])
    with pytest.raises(IndexError):
        nf.functional.cross_entropy(nf.zeros(2, 3), [0, 3])
    with pytest.raises(IndexError):
        nf.zeros(2, 3).narrow(1, 2, 2)


def test_invalid_values():
    with pytest.raises(nf.InvalidArgumentError):
        nf.functional.dropout(nf.zeros(3), p=1.5)
    with pytest.raises(ValueError):
        nf.randn(3, std=-1.0)
    with pytest.raises(ValueError):
        nf.tensor([1.0, 2.0]).item()
    with pytest.raises(ValueError):
        bool(nf.zeros(2))


def test_backward_misuse_is_a_grad_error():
    x = nf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(nf.GradError, match="one-element"):
        (x * x).backward()
    y = (x * x).sum()
    y.backward()
    with pytest.raises(nf.GradError, match="second time"):
        y.backward()
    with pytest.raises(RuntimeError):  # GradError is a RuntimeError too
        nf.tensor([1.0]).sum().backward()
    with pytest.raises(nf.ShapeError):
        (x * 2).backward(nf.zeros(3))


def test_huge_sizes_are_a_clear_error_not_an_abort():
    with pytest.raises(nf.AllocationError, match="cannot allocate"):
        nf.zeros(1 << 40, 1 << 30)
    with pytest.raises(MemoryError):
        nf.zeros(1 << 22, 1 << 22, 1 << 10)  # fits an isize, not this machine
    with pytest.raises(MemoryError):
        nf.zeros(1 << 20, 1) + nf.zeros(1 << 22)  # a broadcast that would need 16 TiB
    with pytest.raises(MemoryError):
        nf.zeros(1 << 21, 1) @ nf.zeros(1, 1 << 21)


def test_nan_and_inf_propagate_like_ieee():
    x = nf.tensor([0.0, -1.0, float("inf"), float("nan")])
    out = x.log().numpy()
    assert out[0] == -np.inf and math.isnan(out[1]) and out[2] == np.inf and math.isnan(out[3])
    assert math.isnan((nf.tensor([1.0, float("nan")]).sum()).item())
    assert math.isnan(nf.tensor([1.0, float("nan"), 3.0]).max().item())
    assert (nf.tensor([1.0]) / 0.0).item() == np.inf
    s = nf.tensor([[0.0, float("-inf")]]).softmax(-1).numpy()
    assert_close(s, [[1.0, 0.0]])


def test_empty_tensors():
    e = nf.zeros(0, 3)
    assert (e + 1).shape == (0, 3)
    assert e.sum().item() == 0.0
    assert e.sum(dim=0).tolist() == [0.0, 0.0, 0.0]
    assert (e @ nf.zeros(3, 2)).shape == (0, 2)
    assert_close(nf.zeros(2, 0) @ nf.zeros(0, 3), np.zeros((2, 3)))
    assert nf.cat([e, nf.ones(1, 3)]).shape == (1, 3)
    assert math.isnan(e.mean().item())
    with pytest.raises(ValueError):
        e.max()
    assert nf.tensor([]).shape == (0,)


def test_in_place_copy_for_state_loading():
    p = nf.zeros(2, 2, requires_grad=True)
    p.copy_(np.ones((2, 2)))
    assert p.numpy().sum() == 4
    with pytest.raises(nf.ShapeError):
        p.copy_(np.ones(3))
    with pytest.raises(nf.GradError):
        (p * 2).copy_(np.ones((2, 2)))


# ---------------------------------------------------------------- errors that teach (issue 8)
def test_reading_grad_of_a_non_leaf_warns_and_says_why():
    w = nf.tensor([1.0, -2.0], requires_grad=True)
    (w * w).sum().backward()
    w -= 0.1 * w.grad  # outside no_grad: w is now the result of an op, not the parameter
    assert not w.is_leaf
    with pytest.warns(UserWarning, match=r"not a leaf.*w -= lr \* w\.grad.*no_grad"):
        assert w.grad is None


def test_reading_grad_of_a_leaf_does_not_warn():
    import warnings

    w = nf.tensor([1.0, -2.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert w.grad is None  # a leaf before backward: None, silently, as in torch
        (w * w).sum().backward()
        assert_close(w.grad, [2.0, -4.0])
        with nf.no_grad():
            w.copy_(w - 0.1 * w.grad)  # the in-place update the warning recommends
        assert w.is_leaf and w.grad is not None


def test_float_targets_name_the_call():
    logits = nf.randn(2, 3)
    with pytest.raises(TypeError, match=r"^cross_entropy: targets: indices must be integers"):
        nf.functional.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"^cross_entropy: targets: indices must be whole numbers"):
        nf.functional.cross_entropy(logits, nf.tensor([0.5, 1.0]))
    with pytest.raises(TypeError, match=r"^embedding: ids: "):
        nf.functional.embedding(nf.randn(4, 2), np.array([0.5]))
    with pytest.raises(TypeError, match=r"^token_logprobs: targets: "):
        nf.functional.token_logprobs(logits, np.array([0.5, 1.0]))


@pytest.mark.parametrize(
    "key",
    [np.array([True, False]), [True, False], True, "compare2d", "compare1d"],
    ids=["numpy-bool", "list-bool", "python-bool", "comparison-2d", "comparison-1d"],
)
def test_boolean_masks_are_refused_with_what_to_use_instead(key):
    x = nf.tensor([[1.0, -2.0], [-3.0, 4.0]])
    if isinstance(key, str) and key == "compare2d":
        key = x > 0  # a 2-D 0/1 tensor: what `x[x > 0]` passes
    elif isinstance(key, str):
        # 1-D: its 0/1 values would silently read as rows 0 and 1 (x[[1, 0]] gave rows 1 and 0)
        key = nf.tensor([-1.0, 1.0]) > 0
    with pytest.raises(TypeError, match=r"boolean masks are not supported as indices") as info:
        x[key]
    assert "nf.where" in str(info.value) and "flatnonzero" in str(info.value)
    assert "index arrays must be 1-D" not in str(info.value) or "mask" in str(info.value)


def test_a_computed_tensor_still_indexes():
    x = nf.tensor([10.0, 20.0, 30.0])
    mask = x > 15  # a mask as a value is fine: arithmetic on it gives an ordinary tensor
    assert (x * mask).tolist() == [0.0, 20.0, 30.0]
    assert x[nf.tensor([2.0, 0.0])].tolist() == [30.0, 10.0]
    assert x[(x > 15) * 1.0 + 0.0].tolist() == [10.0, 20.0, 20.0]  # no longer a comparison result


def test_negative_thread_count_is_a_value_error():
    n = nf.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n must be >= 0.*got -2"):
        nf.set_num_threads(-2)
    assert nf.get_num_threads() == n  # refused, so nothing changed


@pytest.mark.parametrize("make, name", [(nf.zeros, "zeros"), (nf.ones, "ones")])
def test_huge_zeros_and_ones_name_themselves(make, name):
    with pytest.raises(nf.AllocationError, match=rf"^{name}: cannot allocate"):
        make(2**62)
    with pytest.raises(nf.AllocationError, match=rf"^{name}: "):
        make(2**40, 2**30)  # element count overflows


def test_argmax_returns_a_tensor():
    x = np.array([[0.1, 3.0, -1.0], [5.0, 2.0, 5.0]], dtype=np.float32)
    X = nf.tensor(x)
    a = X.argmax(-1)
    assert isinstance(a, nf.Tensor) and a.shape == (2,)
    assert a.tolist() == [1.0, 0.0]  # first maximum on ties, as numpy and torch
    k = X.argmax(0, keepdim=True)
    assert isinstance(k, nf.Tensor) and k.shape == (1, 3) and k.tolist() == [[1.0, 0.0, 1.0]]
    flat = X.argmax()
    assert isinstance(flat, nf.Tensor) and flat.shape == ()
    assert int(flat) == 3 and isinstance(int(flat), int)
    assert not a.requires_grad


def test_int_of_a_tensor():
    assert int(nf.tensor(2.9)) == 2 and int(nf.tensor([-2.9])) == -2
    with pytest.raises(ValueError):
        int(nf.tensor(float("nan")))
    with pytest.raises(ValueError):
        int(nf.tensor([1.0, 2.0]))


def test_T_transposes_2d_and_refuses_more_dims():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_close(nf.tensor(a).T, a.T)
    assert nf.tensor([1.0, 2.0]).T.tolist() == [1.0, 2.0]  # 1-D and 0-D: unchanged, as in torch
    assert nf.tensor(3.0).T.shape == ()
    with pytest.raises(nf.ShapeError, match=r"\.mT"):
        _ = nf.zeros(2, 3, 4).T


def test_mT_swaps_the_last_two_dims_with_gradient():
    b = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    B = nf.tensor(b, requires_grad=True)
    assert B.mT.shape == (2, 4, 3)
    assert_close(B.mT, b.swapaxes(-1, -2))
    assert_close(nf.tensor(b[0]).mT, b[0].T)
    w = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 4, 3)
    (B.mT * nf.tensor(w)).sum().backward()
    assert_close(B.grad, w.swapaxes(-1, -2))
    with pytest.raises(nf.ShapeError, match=r"mT: needs a tensor of at least 2 dims"):
        _ = nf.tensor([1.0, 2.0]).mT
