"""Every guide notebook (notebooks/NN_*.ipynb) runs top to bottom in smoke mode.

Each notebook is executed with nbclient in a fresh kernel with NANOFRONTIER_SMOKE=1
(per-cell timeout 600 s, working directory notebooks/) and must print a ``RESULT:`` line and state at
least one claim (``nf.tour.claim``) for the tour's SUMMARY.md.
An empty notebooks folder is a failure, not a skip: the guide is made of notebooks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanofrontier import tour as cli

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
SMOKE_TIMEOUT = 600


@pytest.mark.parametrize(
    "path", NOTEBOOKS or [None], ids=[p.stem for p in NOTEBOOKS] or ["no-notebooks"]
)
def test_notebook_runs_in_smoke_mode(path):
    if path is None:
        pytest.fail(
            f"no notebooks found: expected notebooks/NN_*.ipynb in {NOTEBOOK_DIR}",
            pytrace=False,
        )
    run = cli.execute_notebook(
        path, timeout=SMOKE_TIMEOUT, kernel_name="python3", smoke=True, progress=False
    )
    assert not run.interrupted, f"{path.name}: interrupted"
    if not run.ok:
        tail = "\n".join(run.traceback.strip().splitlines()[-30:])
        pytest.fail(
            f"{path.name} failed in smoke mode: {run.detail()}\n{tail}", pytrace=False
        )
    if run.headline is None:
        pytest.fail(
            f"{path.name} ran but printed no line starting with 'RESULT:' on stdout",
            pytrace=False,
        )
    if not run.claims:
        pytest.fail(f"{path.name} stated no claim (nf.tour.claim) for the tour's SUMMARY.md", pytrace=False)
    bad = [c for c in run.claims if "error" in c or not c["smoke"]]
    assert not bad, f"{path.name}: unreadable claim lines, or claims not marked as smoke mode: {bad}"
