"""Exceptions raised by nanofrontier.

Each class subclasses both :class:`NanofrontierError` and the matching builtin, so ``except ValueError``
keeps working while ``except nanofrontier.NanofrontierError`` catches everything from this library.
Wrong *types* (a string where a number belongs, float indices, complex data) raise the builtin
``TypeError``; Ctrl-C during a long call raises ``KeyboardInterrupt``.
"""


class NanofrontierError(Exception):
    """Base class of every error raised by nanofrontier."""


class ShapeError(NanofrontierError, ValueError):
    """Shapes that do not fit together, e.g. ``add: cannot broadcast (2, 3) with (4,)``."""


class OutOfRangeError(NanofrontierError, IndexError):
    """An index or dimension out of range."""


class InvalidArgumentError(NanofrontierError, ValueError):
    """A value that is not allowed (a negative std, a dropout p outside [0, 1], ...)."""


class GradError(NanofrontierError, RuntimeError):
    """Autograd misuse: backward on a non-scalar without a gradient, backward through a freed graph, ..."""


class AllocationError(NanofrontierError, MemoryError):
    """A tensor too large to allocate."""


class FileFormatError(NanofrontierError, ValueError):
    """A file that is corrupt, truncated or not in the expected format."""


__all__ = [
    "NanofrontierError",
    "ShapeError",
    "OutOfRangeError",
    "InvalidArgumentError",
    "GradError",
    "AllocationError",
    "FileFormatError",
]
