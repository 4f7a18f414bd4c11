"""The dtype rules, in one place (the Rust bindings call these for anything that is not already a
float32 array or a Tensor).

Data → float32:
  * bool, unsigned/signed integer and float16/32/64 inputs are converted to float32. float64 values are
    rounded to the nearest float32 (values beyond float32's range become ±inf); integers above 2**24 may
    lose their last digits, exactly as ``numpy.asarray(x, dtype=numpy.float32)`` does.
  * complex, string, bytes, object, datetime and other kinds raise ``TypeError``.
Indices (token ids, targets, index arrays) → int64:
  * signed/unsigned integer arrays and lists of Python ints; a Tensor whose values are all whole numbers.
  * floats, bools and anything else raise ``TypeError`` (silently truncating 2.7 to 2 hides bugs).
"""

import numpy as np

_NUMERIC_KINDS = "biuf"


def to_f32_array(data):
    if hasattr(data, "numpy") and type(data).__name__ == "Tensor":
        return data.numpy()
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:  # ragged lists etc.
        raise TypeError(f"cannot make a tensor from {type(data).__name__}: {e}") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(
            f"cannot make a float32 tensor from data of dtype {arr.dtype} "
            "(expected bool, integer or float values)"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes ±inf, as documented
        return np.asarray(arr, dtype=np.float32, order="C")  # (ascontiguousarray would make 0-d 1-d)


_BOOL_INDEX = (
    "boolean masks are not supported as indices; use nf.where(mask, x, other) or "
    "nf.functional.masked_fill(x, mask, value) to act on the masked entries, or integer positions such as "
    "numpy.flatnonzero(mask)"
)


def to_index_array(data, what=None):
    """``data`` as a C-ordered int64 array; every error message starts with ``what`` (e.g.
    ``"cross_entropy: targets"``) when given, so it names the call."""
    pre = f"{what}: " if what else ""
    if hasattr(data, "numpy") and type(data).__name__ == "Tensor":
        vals = data.numpy()
        if not np.all(np.isfinite(vals)) or not np.all(vals == np.round(vals)):
            raise TypeError(
                f"{pre}indices must be whole numbers; this tensor holds fractional or non-finite values"
            )
        return vals.astype(np.int64)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{pre}cannot read indices from {type(data).__name__}: {e}") from None
    if arr.dtype.kind == "b":
        raise TypeError(f"{pre}indices must be integers, got a bool array of shape {arr.shape}: {_BOOL_INDEX}")
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            return arr.astype(np.int64)
        raise TypeError(f"{pre}indices must be integers, got an array of dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise TypeError(f"{pre}index values do not fit in int64")
    return np.asarray(arr, dtype=np.int64, order="C")
