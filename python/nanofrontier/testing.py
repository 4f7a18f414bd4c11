"""Checks that say how far off: ``assert_close`` and a finite-difference ``gradcheck``.

Used by the test-suite and by the notebooks (Part 1 checks a hand-derived gradient with them)."""

import numpy as np

from ._core import Tensor, set_grad_enabled


def _np(x):
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=""):
    """Raise AssertionError naming the worst element if ``|actual - expected| > atol + rtol*|expected|``."""
    a = _np(actual).astype(np.float64)
    e = _np(expected).astype(np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{msg} shape mismatch: {a.shape} vs {e.shape}")
    if a.size == 0:
        return
    bad = ~np.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        diff = np.abs(a - e)
        diff[np.isnan(diff)] = np.inf
        i = np.unravel_index(np.argmax(np.where(bad, diff, -1)), a.shape)
        raise AssertionError(
            f"{msg} {bad.sum()} of {a.size} elements differ; worst at {tuple(int(j) for j in i)}: "
            f"{a[i]:.6g} vs {e[i]:.6g} (|diff| {diff[i]:.3g}, atol {atol}, rtol {rtol}); "
            f"max |diff| {np.nanmax(np.where(np.isfinite(diff), diff, np.nan)) if np.isfinite(diff).any() else np.inf:.3g}"
        )


def gradcheck(fn, inputs, eps=1e-2, atol=1e-3, rtol=1e-2):
    """Compare the autograd gradient of ``sum(w * fn(*inputs))`` (fixed random weights ``w``) with central
    finite differences computed in float64 from float32 evaluations. ``inputs`` are numpy arrays or
    lists; returns the largest absolute difference, raises AssertionError naming the worst element."""
    xs = [np.array(x, dtype=np.float32) for x in inputs]
    leaves = [Tensor(x, requires_grad=True) for x in xs]
    out = fn(*leaves)
    w = np.random.default_rng(0).uniform(0.5, 1.5, size=out.shape).astype(np.float32)
    out.backward(Tensor(w))
    worst = 0.0
    prev = set_grad_enabled(False)
    try:
        for k, (x, leaf) in enumerate(zip(xs, leaves)):
            analytic = leaf.grad.numpy() if leaf.grad is not None else np.zeros_like(x)
            numeric = np.zeros(x.shape, dtype=np.float64)
            flat = x.reshape(-1)
            for i in range(flat.size):
                orig = flat[i]
                flat[i] = orig + eps
                lp = float(np.sum(fn(*[Tensor(v) for v in xs]).numpy().astype(np.float64) * w))
                flat[i] = orig - eps
                lm = float(np.sum(fn(*[Tensor(v) for v in xs]).numpy().astype(np.float64) * w))
                flat[i] = orig
                h = float(np.float32(orig + eps)) - float(np.float32(orig - eps))
                numeric.reshape(-1)[i] = (lp - lm) / h
            assert_close(analytic, numeric, atol=atol, rtol=rtol, msg=f"gradcheck input {k}:")
            worst = max(worst, float(np.max(np.abs(analytic - numeric), initial=0.0)))
    finally:
        set_grad_enabled(prev)
    return worst


__all__ = ["assert_close", "gradcheck"]
