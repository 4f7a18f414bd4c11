"""The one exception of the tour: a usage problem, reported as ``error: <message>`` with exit code 2."""

from __future__ import annotations


class TourError(Exception):
    """A usage problem reported as ``error: <message>`` with exit code 2."""
