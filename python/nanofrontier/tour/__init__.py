"""``nanofrontier tour``: execute the guide's notebooks and print one result line per notebook.

* :mod:`.selection` — which notebooks (the folder, ``NN_*.ipynb``, ``--only``);
* :mod:`.execution` — running one notebook in a fresh kernel: timeouts, Ctrl-C, outputs, its ``RESULT:`` line;
* :mod:`.claims` — ``claim(...)``, called by each notebook for each claim it measured, and ``SUMMARY.md``;
* :mod:`.cli` — the argparse front and the summary (``main`` is the console script).

Nothing here imports the compiled extension: only the standard library at import time, and nbclient /
nbformat / jupyter_client / tqdm lazily where they are needed (the ``notebooks`` extras).
"""

from __future__ import annotations

from .claims import CLAIM_PREFIX, claim, notebook_claims, write_summary
from .cli import PROG, build_parser, cmd_tour, main
from .errors import TourError
from .execution import (
    DEFAULT_SMOKE_TIMEOUT,
    DEFAULT_TIMEOUT,
    NO_RESULT,
    RESULT_PREFIX,
    SMOKE_ENV,
    NotebookRun,
    execute_notebook,
    result_headline,
    smoke_environment,
    write_notebook_atomic,
)
from .selection import find_notebooks_dir, list_notebooks, notebook_prefix, parse_only, select_notebooks

__all__ = [
    "CLAIM_PREFIX",
    "DEFAULT_SMOKE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "NO_RESULT",
    "PROG",
    "RESULT_PREFIX",
    "SMOKE_ENV",
    "NotebookRun",
    "TourError",
    "build_parser",
    "claim",
    "cmd_tour",
    "execute_notebook",
    "find_notebooks_dir",
    "list_notebooks",
    "main",
    "notebook_claims",
    "notebook_prefix",
    "parse_only",
    "result_headline",
    "select_notebooks",
    "smoke_environment",
    "write_notebook_atomic",
    "write_summary",
]
