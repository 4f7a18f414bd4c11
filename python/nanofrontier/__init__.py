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


class autocast(_contextlib.ContextDecorator):
    """Context manager (or decorator): matmul and linear products made inside it on this thread run in
    bfloat16 with float32 accumulation::

        with nf.autocast("bf16"):
            loss = model(x, targets)   # the big products in bf16 (tensors stay float32)
        loss.backward()                # their backward products in bf16 too (recorded in the forward)

    Both operands of a product are rounded to bf16 (to nearest even) as the kernel packs them; the sums
    are float32 and every tensor stays float32, so optimizers keep float32 master weights. The decode
    steps of ``generate`` / ``generate_batch`` (and so the RL rollouts) read a bf16 copy of each weight,
    made once per call, with float32 activations and sums (half the bytes to stream per token); their
    prompt pass is the bf16 GEMM. Other matrix-vector products (a single row outside ``generate``) and
    everything that is not a matmul stay float32. ``dtype`` is
    ``"bf16"`` (or ``"bfloat16"``) to turn it on, ``"f32"`` (or ``"float32"``) to turn it off again in a
    nested scope; the previous setting comes back on exit. The setting is per thread and float32 is the
    default. Raises ``InvalidArgumentError`` on entry when the CPU has no AVX512-BF16 (or
    ``NANOFRONTIER_MATMUL_ISA`` forces a lower path); see ``bf16_supported()``.
    """

    _NAMES = {"bf16": True, "bfloat16": True, "f32": False, "float32": False}

    def __init__(self, dtype: str = "bf16"):
        if dtype not in self._NAMES:
            raise InvalidArgumentError(f"autocast: dtype must be one of {sorted(self._NAMES)}, got {dtype!r}")
        self.dtype = dtype
        self._prev = []

    def __enter__(self):
        self._prev.append(_core._set_bf16(self._NAMES[self.dtype]))
        return self

    def __exit__(self, *exc):
        _core._set_bf16(self._prev.pop())
        return False


def bf16_supported():
    """Whether ``autocast("bf16")`` can run here: a CPU with AVX512-BF16 and the AVX-512 matmul path."""
    return _core._bf16_supported()


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
    "autocast",
    "bf16_supported",
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
