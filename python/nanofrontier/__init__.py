"""nanofrontier: the guide *From Neural Nets to Frontier Models*, made runnable on a laptop CPU.

A Rust core (tensors, reverse-mode autograd, multithreaded ops, optimizers) with a small torch-like
Python surface::

    import nanofrontier as nf
    x = nf.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = (x @ x).tanh().sum()
    loss.backward()
    x.grad            # d(loss)/dx

Submodules: ``nf.nn`` (Module, Linear, MLP, ...), ``nf.optim`` (SGD, AdamW, clipping, LR schedules),
``nf.functional`` (softmax, cross_entropy, ...), ``nf.testing`` (gradcheck, assert_close).
"""

import contextlib as _contextlib
import os as _os

from . import _core
from ._core import (
    Tensor,
    cat,
    expand,
    full,
    get_num_threads,
    get_rng_state,
    is_grad_enabled,
    manual_seed,
    matmul,
    maximum,
    minimum,
    multinomial,
    ones,
    rand,
    randint,
    randn,
    set_grad_enabled,
    set_num_threads,
    set_rng_state,
    stack,
    zeros,
)
from ._core import where as where
from .exceptions import (
    AllocationError,
    FileFormatError,
    GradError,
    InvalidArgumentError,
    NanofrontierError,
    OutOfRangeError,
    ShapeError,
)

__version__ = _core.__version__


def tensor(data, requires_grad=False):
    """A new float32 tensor (always a copy) from a number, nested lists, a numpy array or a Tensor.

    Conversion rule: bool, integer and float inputs become float32; float64 values are rounded to the
    nearest float32 (exactly ``numpy.asarray(data, dtype=numpy.float32)``). Complex, string and object
    data raise ``TypeError``.
    """
    return Tensor(data, requires_grad=requires_grad)


class no_grad(_contextlib.ContextDecorator):
    """Context manager (or decorator) that turns op recording off on this thread::

        with nf.no_grad():
            logits = model(x)      # no graph is built; nothing to backpropagate
    """

    def __enter__(self):
        self._prev = set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        set_grad_enabled(self._prev)
        return False


def smoke_mode():
    """True when ``NANOFRONTIER_SMOKE`` is set to a non-empty value other than ``0``.

    Notebooks shrink their runs to seconds in smoke mode (the test-suite and ``nanofrontier tour --smoke``
    set it)."""
    return _os.environ.get("NANOFRONTIER_SMOKE", "") not in ("", "0")


from . import functional, models, nn, optim, testing  # noqa: E402  (they import the names above)
from . import checkpoint, data, formats, tokenizer, train  # noqa: E402
from . import rl  # noqa: E402  (post-training objectives)
from . import tasks  # noqa: E402  (generated tasks for the post-training notebooks)
from . import agents  # noqa: E402, F401  (Part 7: ReAct agents and their tools)
from . import tour  # noqa: E402  (the notebooks' runner; nf.tour.claim states a measured claim)
from . import scaling  # noqa: E402  (Part 4: FLOP counts, compute-budget sweeps, power-law fits)

__all__ = [
    "Tensor",
    "tensor",
    "zeros",
    "ones",
    "full",
    "randn",
    "rand",
    "randint",
    "multinomial",
    "manual_seed",
    "get_rng_state",
    "set_rng_state",
    "matmul",
    "maximum",
    "minimum",
    "cat",
    "stack",
    "expand",
    "where",
    "no_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "set_num_threads",
    "get_num_threads",
    "smoke_mode",
    "functional",
    "models",
    "nn",
    "optim",
    "testing",
    "NanofrontierError",
    "ShapeError",
    "OutOfRangeError",
    "InvalidArgumentError",
    "GradError",
    "AllocationError",
    "FileFormatError",
]
