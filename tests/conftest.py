"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nf_data():
    """The folder of real data files (tiny Shakespeare, stories260K), as ``NANOFRONTIER_DATA`` names it.

    CI sets ``NANOFRONTIER_DATA``; when it is unset, the fixture points it at ``shared/data`` beside the
    checkout (where CI's copy lives) for the whole session. Missing data is an error, never a skip."""
    env = os.environ.get("NANOFRONTIER_DATA", "")
    fallback = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(env) if env else fallback
    if not (path / "tinyshakespeare.txt").is_file() or not (path / "stories260K").is_dir():
        raise RuntimeError(
            f"test data not found in {path} (from {'NANOFRONTIER_DATA' if env else 'the fallback beside the checkout'}): "
            "set NANOFRONTIER_DATA to the folder holding tinyshakespeare.txt and stories260K/"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOFRONTIER_DATA", str(path))
        yield path
