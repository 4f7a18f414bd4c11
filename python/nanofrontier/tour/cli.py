"""The argparse front of ``nanofrontier tour`` (also ``python -m nanofrontier tour``).

The tour executes the guide's notebooks one after another, writes the executed copies to an output folder
(with ``SUMMARY.md``: one row per claim the notebooks stated, see :mod:`.claims`) and prints one summary
line per notebook::

    01_neural_networks  OK   12.3s  spiral accuracy 97.8% (target >= 95%)

Which notebooks: :mod:`.selection`; running one: :mod:`.execution`. Standard library only at import time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .claims import write_summary
from .errors import TourError
from .execution import (
    DEFAULT_SMOKE_TIMEOUT,
    DEFAULT_TIMEOUT,
    SMOKE_ENV,
    NotebookRun,
    execute_notebook,
    kernel_extra_arguments,
    require_notebook_extras,
    write_notebook_atomic,
)
from .selection import find_notebooks_dir, list_notebooks, parse_only, select_notebooks

PROG = "nanofrontier"
DATA_ENV = "NANOFRONTIER_DATA"  # passed through to the kernel unchanged (inherited)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return version("nanofrontier")
    except PackageNotFoundError:
        return "unknown"
    except Exception:  # a broken installation must not break --version
        return "unknown"


def _summary_line(run: NotebookRun, width: int) -> str:
    status = "OK" if run.ok else "FAIL"
    return f"{run.name:<{width}}  {status:<4} {run.seconds:5.1f}s  {run.detail()}"


def cmd_tour(args: argparse.Namespace) -> int:
    require_notebook_extras()  # fail fast with the install hint
    notebooks_dir = find_notebooks_dir(args.notebooks)
    selected = select_notebooks(list_notebooks(notebooks_dir), parse_only(args.only))
    out_dir = Path(args.out).expanduser()
    if out_dir.resolve() == notebooks_dir.resolve():
        raise TourError("--out must differ from the notebooks folder (it would overwrite them)")
    timeout = args.timeout
    if timeout is None:
        timeout = DEFAULT_SMOKE_TIMEOUT if args.smoke else DEFAULT_TIMEOUT
    # validate the kernel once, before any notebook runs
    kernel_extra_arguments(args.kernel)
    out_dir.mkdir(parents=True, exist_ok=True)

    mode = "smoke" if args.smoke else "full"
    limit = f"{timeout:g}s per cell" if timeout and timeout > 0 else "no time limit"
    print(
        f"tour: {len(selected)} notebook(s) from {notebooks_dir} ({mode} mode, {limit}, "
        f"kernel {args.kernel}) -> {out_dir}",
        flush=True,
    )
    width = max(len(p.stem) for p in selected)
    passed = failed = 0
    runs: list[NotebookRun] = []
    interrupted_name: str | None = None
    try:
        for path in selected:
            run = execute_notebook(
                path,
                timeout=timeout,
                kernel_name=args.kernel,
                smoke=args.smoke,
                cwd=notebooks_dir,
            )
            if run.nb is not None:
                write_notebook_atomic(run.nb, out_dir / path.name)
            if run.interrupted:
                where = f" at cell {run.cell_index}" if run.cell_index is not None else ""
                interrupted_name = f"{run.name} stopped{where}"
                break
            print(_summary_line(run, width), flush=True)
            runs.append(run)
            if run.ok:
                passed += 1
            else:
                failed += 1
    except KeyboardInterrupt:
        interrupted_name = interrupted_name or "between notebooks"
    if interrupted_name is not None:
        print(f"interrupted: {interrupted_name} (kernel shut down)", flush=True)
    print(f"executed notebooks are in {out_dir}", flush=True)
    if runs:
        summary = write_summary(out_dir, runs, smoke=args.smoke)
        print(f"the claims, measured: {summary}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    if interrupted_name is not None:
        return 130
    return 0 if failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="nanofrontier command line tools.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tour = sub.add_parser(
        "tour",
        help="execute the guide's notebooks and print one result line per notebook",
        description=(
            "Execute the guide's notebooks (NN_*.ipynb) in order, write the executed "
            "copies to --out and print one summary line per notebook with its RESULT "
            f"headline. Exit status: 0 all passed, 1 some failed, 2 usage error, 130 "
            f"interrupted. {DATA_ENV} is passed to the notebooks unchanged. "
            "Needs the notebook extras: pip install 'nanofrontier[notebooks]'."
        ),
    )
    tour.add_argument(
        "--smoke",
        action="store_true",
        help=f"quick run: sets {SMOKE_ENV}=1 for the notebooks (small sizes, few steps)",
    )
    tour.add_argument(
        "--only",
        action="append",
        metavar="NN",
        help="run only these notebooks by numeric prefix (repeatable or comma-separated: "
        "--only 01 --only 03, --only 1,3; '5' selects 05, 05a, 05b; '05a' only 05a)",
    )
    tour.add_argument(
        "--out",
        default="tour_out",
        metavar="DIR",
        help="where the executed notebooks are written (default: ./tour_out)",
    )
    tour.add_argument(
        "--notebooks",
        metavar="DIR",
        help="folder with the NN_*.ipynb notebooks (default: ./notebooks, else the "
        "repository's notebooks/ next to the package sources)",
    )
    tour.add_argument(
        "--timeout",
        type=float,
        metavar="SEC",
        help=f"per-cell time limit in seconds (default {DEFAULT_TIMEOUT:g}, "
        f"{DEFAULT_SMOKE_TIMEOUT:g} with --smoke; 0 = no limit)",
    )
    tour.add_argument(
        "--kernel",
        default="python3",
        metavar="NAME",
        help="Jupyter kernel to run the notebooks with (default: python3)",
    )
    tour.set_defaults(func=cmd_tour)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanofrontier`` / ``python -m nanofrontier``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except TourError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
