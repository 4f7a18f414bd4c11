"""Stateless ops, torch.nn.functional style. Every function takes Tensors (or array-likes) and records
itself for autograd; the math runs in Rust."""

from . import _core
from ._core import (
    Tensor,
    attention_weights,
    cat,
    embedding,
    expand,
    gelu,
    index_select,
    layer_norm,
    linear,
    log_sigmoid,
    masked_fill,
    matmul,
    rms_norm,
    rope,
    scaled_dot_product_attention,
    silu,
    softplus,
    stack,
    swiglu,
)
from ._core import where as where
from ._convert import to_index_array
from .exceptions import ShapeError


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def relu(x):
    """max(x, 0)."""
    return _t(x).relu()


def tanh(x):
    """Hyperbolic tangent."""
    return _t(x).tanh()


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _t(x).sigmoid()


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along ``dim``, computed stably (the max is subtracted first)."""
    return _t(x).softmax(dim)


def log_softmax(x, dim=-1):
    """log(softmax(x)) along ``dim``, computed stably."""
    return _t(x).log_softmax(dim)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean of -log softmax(logits)[target] over rows whose target is not ``ignore_index``.

    ``logits`` has shape (..., C); ``targets`` holds integer class ids with the leading shape (...).
    If every row is ignored the result is nan (as in torch)."""
    return _core.cross_entropy(logits, targets, ignore_index)


def token_logprobs(logits, targets, ignore_index=-100):
    """log softmax(logits)[..., target] at every position: ``logits`` (..., V) and integer ``targets`` of the
    leading shape (...) give a differentiable tensor of that shape, e.g. (B, T) for (B, T, V) logits.
    Positions whose target is ``ignore_index`` give 0 and no gradient. Targets of another shape raise
    ``ShapeError`` naming both shapes (a transposed (T, B) batch has the right count but the wrong rows)."""
    logits = _t(logits)
    targets = to_index_array(targets, "token_logprobs: targets")
    lead = tuple(logits.shape[:-1])
    if logits.ndim > 0 and tuple(targets.shape) != lead:
        raise ShapeError(f"token_logprobs: targets have shape {tuple(targets.shape)} but the logits' leading "
                         f"shape is {lead} (logits {tuple(logits.shape)})")
    return _core.token_logprobs(logits, targets, ignore_index).reshape(lead)


def dropout(x, p=0.5, training=True):
    """Zero each entry with probability ``p`` and scale the rest by 1/(1-p); identity when not training.
    The mask comes from the global seeded generator (``nf.manual_seed``)."""
    return _core.dropout(x, p, training)


def mse_loss(pred, target):
    """Mean squared error."""
    d = _t(pred) - target
    return (d * d).mean()


__all__ = [
    "relu",
    "tanh",
    "sigmoid",
    "log_sigmoid",
    "softplus",
    "gelu",
    "silu",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "dropout",
    "mse_loss",
    "matmul",
    "embedding",
    "index_select",
    "masked_fill",
    "where",
    "cat",
    "stack",
    "expand",
    "linear",
    "layer_norm",
    "rms_norm",
    "swiglu",
    "rope",
    "scaled_dot_product_attention",
    "attention_weights",
    "token_logprobs",
]
