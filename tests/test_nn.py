"""Layers: shapes, parameter names, numpy references, state_dict round trips and their error cases."""

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.testing import assert_close, gradcheck


def test_linear_matches_numpy_and_torch_layout():
    nf.manual_seed(0)
    lin = nf.nn.Linear(4, 3)
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (3,)
    bound = 1 / np.sqrt(4)
    assert np.abs(lin.weight.numpy()).max() <= bound
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert_close(lin(nf.tensor(x)), x @ lin.weight.numpy().T + lin.bias.numpy(), atol=1e-6)
    assert nf.nn.Linear(4, 3, bias=False).bias is None
    with pytest.raises(nf.ShapeError):
        lin(nf.zeros(5, 3))


def test_mlp_structure_names_and_gradients():
    nf.manual_seed(0)
    mlp = nf.nn.MLP([2, 8, 8, 3], activation="tanh")
    names = [n for n, _ in mlp.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                     "layers.4.weight", "layers.4.bias"]
    assert mlp.num_parameters() == 2 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    assert "Linear(in_features=2, out_features=8, bias=True)" in repr(mlp)
    w = [p.numpy() for p in mlp.parameters()]

    def f(x, *params):
        h = x
        for i in range(3):
            h = h @ params[2 * i].T + params[2 * i + 1]
            if i < 2:
                h = h.tanh()
        return h

    x = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    assert_close(mlp(nf.tensor(x)), f(nf.tensor(x), *[nf.tensor(a) for a in w]), atol=1e-6)
    gradcheck(f, [x] + w)  # the whole network, every parameter
    with pytest.raises(ValueError):
        nf.nn.MLP([2, 3], activation="swish")


def test_state_dict_round_trip_and_errors():
    nf.manual_seed(1)
    a, b = nf.nn.MLP([3, 5, 2]), nf.nn.MLP([3, 5, 2])
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    b.load_state_dict(sd)
    x = nf.randn(4, 3)
    assert_close(a(x), b(x))
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "layers.0.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        b.load_state_dict({**sd, "extra": np.zeros(1)})
    bad = dict(sd, **{"layers.0.weight": np.zeros((5, 4))})
    before = b.state_dict()
    with pytest.raises(nf.ShapeError, match="layers.0.weight"):
        b.load_state_dict(bad)
    for k in before:  # nothing changed by the failed load
        np.testing.assert_array_equal(before[k], b.state_dict()[k])
    b.load_state_dict({"layers.0.bias": np.ones(5, np.float32)}, strict=False)
    assert_close(b.layers[0].bias, np.ones(5))


def test_train_eval_and_dropout_module():
    m = nf.nn.Sequential(nf.nn.Linear(4, 4), nf.nn.Dropout(0.5))
    assert m.training and m.layers[1].training
    m.eval()
    assert not m.layers[1].training
    x = nf.randn(3, 4)
    assert_close(m(x), m(x))  # deterministic in eval mode
    m.train()
    m(x).sum().backward()  # grads to clear (in training mode, through the dropout mask)
    assert all(p.grad is not None and np.abs(p.grad.numpy()).sum() > 0 for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m.eval()
    m(x).sum().backward()  # the next backward starts from zero: the bias grad is the row count, not more
    assert_close(m.layers[0].bias.grad, np.full(4, 3.0))


def test_linear_uses_the_fused_op_with_the_composite_gradients():
    # nn.Linear runs functional.linear; it must agree with x @ W.T + b forward and backward
    nf.manual_seed(1)
    for shape, bias in [((5, 4), True), ((2, 3, 4), True), ((4,), True), ((6, 4), False)]:
        lin = nf.nn.Linear(4, 3, bias=bias)
        x0 = np.random.default_rng(2).normal(size=shape).astype(np.float32)
        x = nf.tensor(x0, requires_grad=True)
        y = lin(x)
        assert y.grad_fn is not None and "linear" in repr(y.grad_fn).lower(), repr(y.grad_fn)
        dy = np.random.default_rng(3).normal(size=y.shape).astype(np.float32)
        y.backward(nf.tensor(dy))
        grads = [x.grad.numpy(), lin.weight.grad.numpy()] + ([lin.bias.grad.numpy()] if bias else [])
        xr = nf.tensor(x0, requires_grad=True)
        wr = nf.tensor(lin.weight.numpy(), requires_grad=True)
        br = nf.tensor(lin.bias.numpy(), requires_grad=True) if bias else None
        yr = xr @ wr.T + br if bias else xr @ wr.T
        yr.backward(nf.tensor(dy))
        assert_close(y, yr, atol=1e-6, msg=f"{shape} forward")
        refs = [xr.grad, wr.grad] + ([br.grad] if bias else [])
        for name, g, r in zip(["x", "weight", "bias"], grads, refs):
            assert_close(g, r, atol=1e-5, msg=f"{shape} d{name}")
    gradcheck(lambda x, w, b: nf.functional.linear(x, w, b),
              [x0[:2], lin.weight.numpy(), np.ones(3, np.float32)])


def test_linear_shape_error_names_the_layer_and_in_features():
    lin = nf.nn.Linear(3, 4)
    with pytest.raises(nf.ShapeError) as e:
        lin(nf.zeros(2, 5))
    msg = str(e.value)
    assert "Linear(in_features=3, out_features=4, bias=True)" in msg and "in_features=3" in msg, msg
    assert "(2, 5)" in msg, msg
    with pytest.raises(nf.ShapeError, match="in_features=3"):
        lin(nf.tensor(1.0))
    assert lin(np.ones((2, 3), np.float32)).shape == (2, 4)  # array-likes still work


def test_mlp_without_activation_is_a_stack_of_linears():
    nf.manual_seed(0)
    mlp = nf.nn.MLP([3, 5, 2], activation=None)
    assert [type(m).__name__ for m in mlp.layers] == ["Linear", "Linear"]
    x = np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32)
    (w1, b1), (w2, b2) = [(m.weight.numpy(), m.bias.numpy()) for m in mlp.layers]
    assert_close(mlp(nf.tensor(x)), (x @ w1.T + b1) @ w2.T + b2, atol=1e-5)
    with_dropout = nf.nn.MLP([3, 5, 5, 2], activation=None, dropout=0.1)
    kinds = [type(m).__name__ for m in with_dropout.layers]
    assert kinds == ["Linear", "Dropout", "Linear", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="or None"):
        nf.nn.MLP([2, 3], activation="swish")
