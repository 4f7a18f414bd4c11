"""The ``nanofrontier`` command line.

``nanofrontier tour`` (also ``python -m nanofrontier tour``) executes the guide's
notebooks one after another, writes the executed copies to an output folder and prints
one summary line per notebook::

    01_neural_networks  OK   12.3s  spiral accuracy 97.8% (target >= 95%)

The headline is the text after ``RESULT:`` on the last stdout line of the notebook that
starts with ``RESULT:``.

This module deliberately imports nothing from the compiled extension: only the standard
library here, and nbclient / nbformat / jupyter_client / tqdm lazily inside the functions
that need them (they are the ``notebooks`` extras).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

PROG = "nanofrontier"
EXTRAS_HINT = "the tour needs the notebook extras: pip install 'nanofrontier[notebooks]'"
SMOKE_ENV = "NANOFRONTIER_SMOKE"
DATA_ENV = "NANOFRONTIER_DATA"  # passed through to the kernel unchanged (inherited)
DEFAULT_TIMEOUT = 1800.0
DEFAULT_SMOKE_TIMEOUT = 600.0
RESULT_PREFIX = "RESULT:"
NO_RESULT = "(no RESULT line)"

# "01_neural_networks.ipynb" -> ("01", ""), "05a_rlhf_ppo.ipynb" -> ("05", "a")
_NOTEBOOK_RE = re.compile(r"^(\d+)([A-Za-z]*)_.*\.ipynb$")
_SELECTOR_RE = re.compile(r"^(\d+)([A-Za-z]*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class TourError(Exception):
    """A usage problem reported as ``error: <message>`` with exit code 2."""


# --------------------------------------------------------------------------- helpers


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


def _require_notebook_extras() -> tuple[Any, Any]:
    """Import nbformat and nbclient, or explain how to install them."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as exc:
        raise TourError(f"{EXTRAS_HINT} ({exc})") from exc
    return nbformat, NotebookClient


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _first_line(text: str) -> str:
    for line in _strip_ansi(str(text)).splitlines():
        if line.strip():
            return line.strip()
    return ""


def notebook_prefix(path: Path | str) -> str | None:
    """``01_x.ipynb`` -> ``"01"``, ``05a_x.ipynb`` -> ``"05a"``; None if not a guide notebook."""
    m = _NOTEBOOK_RE.match(Path(path).name)
    return None if m is None else m.group(1) + m.group(2)


def list_notebooks(directory: Path) -> list[Path]:
    """The guide notebooks (``NN_*.ipynb``) in ``directory``, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and _NOTEBOOK_RE.match(p.name)),
        key=lambda p: p.name,
    )


def find_notebooks_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """--notebooks DIR, else ./notebooks, else <repo>/notebooks next to the package sources."""
    if explicit is not None:
        d = Path(explicit).expanduser()
        if not d.is_dir():
            raise TourError(f"--notebooks {explicit}: no such directory")
        if not list_notebooks(d):
            raise TourError(f"--notebooks {explicit}: no NN_*.ipynb notebooks in it")
        return d.resolve()
    candidates = [
        Path.cwd() / "notebooks",
        # python/nanofrontier/cli.py -> <repo>/notebooks (editable installs, PYTHONPATH=python)
        Path(__file__).resolve().parents[2] / "notebooks",
    ]
    for d in candidates:
        if list_notebooks(d):
            return d.resolve()
    raise TourError(
        "could not find the guide's notebooks (no NN_*.ipynb in ./notebooks); "
        "run this from the repository root or pass --notebooks DIR"
    )


def parse_only(values: Sequence[str] | None) -> list[str]:
    """Flatten ``--only 01 --only 03,05a`` into ``["01", "03", "05a"]``."""
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def _selector_matches(selector: str, prefix: str) -> bool:
    sel = _SELECTOR_RE.match(selector)
    have = _SELECTOR_RE.match(prefix)
    if sel is None or have is None:
        return selector.lower() == prefix.lower()
    if int(sel.group(1)) != int(have.group(1)):
        return False
    # "5" selects 05, 05a, 05b ...; "05a" selects only 05a
    return not sel.group(2) or sel.group(2).lower() == have.group(2).lower()


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str]) -> list[Path]:
    """Keep the notebooks whose numeric prefix matches one of ``only`` (all when empty)."""
    if not only:
        return list(notebooks)
    unknown = [
        s for s in only if not any(_selector_matches(s, notebook_prefix(p) or "") for p in notebooks)
    ]
    if unknown:
        available = ", ".join(notebook_prefix(p) or p.name for p in notebooks)
        raise TourError(
            f"no notebook matches --only {', '.join(unknown)}; available: {available}"
        )
    return [p for p in notebooks if any(_selector_matches(s, notebook_prefix(p) or "") for s in only)]


def result_headline(nb: Any) -> str | None:
    """Text after ``RESULT:`` of the last stdout line starting with it, or None."""
    headline = None
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") != "stream" or output.get("name") != "stdout":
                continue
            text = output.get("text", "")
            if isinstance(text, list):
                text = "".join(text)
            for line in text.splitlines():
                if line.startswith(RESULT_PREFIX):
                    headline = line[len(RESULT_PREFIX) :].strip()
    return headline


@contextlib.contextmanager
def smoke_environment(smoke: bool) -> Iterator[None]:
    """Set NANOFRONTIER_SMOKE=1 (or remove it) for kernels started inside the block.

    Kernels inherit this process's environment, so this is how the setting reaches the
    notebooks; NANOFRONTIER_DATA and everything else are passed through untouched. The
    previous value is restored on exit so in-process callers (tests) see no change.
    """
    old = os.environ.get(SMOKE_ENV)
    if smoke:
        os.environ[SMOKE_ENV] = "1"
    else:
        os.environ.pop(SMOKE_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SMOKE_ENV, None)
        else:
            os.environ[SMOKE_ENV] = old


def write_notebook_atomic(nb: Any, path: Path) -> None:
    """Write ``nb`` to ``path`` via a temporary file in the same folder + os.replace."""
    nbformat, _ = _require_notebook_extras()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _kernel_extra_arguments(kernel_name: str) -> list[str]:
    """Validate the kernel name; quiet ipykernel's startup warnings (e.g. the TCP one)."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as exc:
        raise TourError(f"{EXTRAS_HINT} ({exc})") from exc
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        try:
            names = ", ".join(sorted(KernelSpecManager().find_kernel_specs()))
        except Exception:
            names = "?"
        hint = "" if names else "; install one with: pip install ipykernel"
        raise TourError(
            f"no Jupyter kernel named {kernel_name!r} (available: {names or 'none'}){hint}"
        ) from None
    if any("ipykernel" in str(arg) for arg in spec.argv):
        return ["--IPKernelApp.log_level=ERROR"]
    return []


# --------------------------------------------------------------------------- execution


@dataclass
class NotebookRun:
    """Outcome of executing one notebook."""

    path: Path
    nb: Any = None
    ok: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    headline: str | None = None
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    cell_index: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def detail(self) -> str:
        """The text shown after the status and time in the summary line."""
        if self.ok:
            return self.headline if self.headline else NO_RESULT
        if self.interrupted:
            where = f" (cell {self.cell_index})" if self.cell_index is not None else ""
            return f"interrupted{where}"
        msg = self.ename or "error"
        first = _first_line(self.evalue)
        if first:
            msg += f": {first}"
        if self.cell_index is not None:
            msg += f" (cell {self.cell_index})"
        return msg


def _make_progress(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    try:
        return tqdm(
            total=total,
            desc=desc,
            unit="cell",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            disable=not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()),
        )
    except Exception:
        return None


def _shutdown_quietly(client: Any) -> None:
    """Best-effort kernel shutdown after an interruption outside setup_kernel's cleanup."""
    if getattr(client, "km", None) is None:
        return
    client.shutdown_kernel = "immediate"
    cleanup = getattr(client, "_cleanup_kernel", None)
    if cleanup is None:
        return
    with contextlib.suppress(BaseException):
        cleanup()


def execute_notebook(
    path: Path | str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    kernel_name: str = "python3",
    smoke: bool = False,
    cwd: Path | str | None = None,
    progress: bool = True,
) -> NotebookRun:
    """Execute one notebook with nbclient and report what happened.

    Never raises for notebook errors (they are in the returned run); a Ctrl-C shuts the
    kernel down and returns a run with ``interrupted=True``. ``timeout`` is per cell
    (None or <= 0: no limit). The kernel's working directory is ``cwd`` (default: the
    notebook's folder).
    """
    nbformat, NotebookClient = _require_notebook_extras()
    path = Path(path).resolve()
    run = NotebookRun(path=path)
    start = time.monotonic()
    bar = None
    client = None
    try:
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception as exc:
            run.ename, run.evalue = type(exc).__name__, str(exc)
            return run
        run.nb = nb
        extra_arguments = _kernel_extra_arguments(kernel_name)
        client = NotebookClient(
            nb,
            timeout=timeout if timeout and timeout > 0 else None,
            kernel_name=kernel_name,
            extra_arguments=extra_arguments,
            resources={"metadata": {"path": str(Path(cwd).resolve() if cwd else path.parent)}},
        )
        n_code = sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())
        if progress:
            bar = _make_progress(n_code, run.name)
        current: int | None = None
        with smoke_environment(smoke):
            try:
                with client.setup_kernel():
                    try:
                        # what NotebookClient.execute() does, cell by cell so we can
                        # report progress and stop cleanly on Ctrl-C
                        client.reset_execution_trackers()
                        msg_id = client.kc.kernel_info()
                        info = client.wait_for_reply(msg_id)
                        if info is not None and "language_info" in info.get("content", {}):
                            nb.metadata["language_info"] = info["content"]["language_info"]
                        for index, cell in enumerate(nb.cells):
                            current = index
                            client.execute_cell(
                                cell, index, execution_count=client.code_cells_executed + 1
                            )
                            if bar is not None and cell.cell_type == "code" and cell.source.strip():
                                bar.update(1)
                        current = None
                        client.set_widgets_metadata()
                    except BaseException:
                        # setup_kernel's cleanup runs next: after Ctrl-C, a timeout or an
                        # error the kernel may still be busy, so kill it rather than ask
                        client.shutdown_kernel = "immediate"
                        raise
            except KeyboardInterrupt:
                run.interrupted = True
                run.cell_index = current
                _shutdown_quietly(client)
                return run
            except Exception as exc:
                run.ename = getattr(exc, "ename", None) or type(exc).__name__
                run.evalue = str(getattr(exc, "evalue", None) or exc)
                run.traceback = _strip_ansi(str(getattr(exc, "traceback", "") or ""))
                run.cell_index = current
                return run
        run.ok = True
        return run
    except KeyboardInterrupt:
        run.interrupted = True
        if client is not None:
            _shutdown_quietly(client)
        return run
    finally:
        if bar is not None:
            with contextlib.suppress(Exception):
                bar.close()
        run.seconds = time.monotonic() - start
        if run.nb is not None:
            run.headline = result_headline(run.nb)


# --------------------------------------------------------------------------- commands


def _summary_line(run: NotebookRun, width: int) -> str:
    status = "OK" if run.ok else "FAIL"
    return f"{run.name:<{width}}  {status:<4} {run.seconds:5.1f}s  {run.detail()}"


def cmd_tour(args: argparse.Namespace) -> int:
    _require_notebook_extras()  # fail fast with the install hint
    notebooks_dir = find_notebooks_dir(args.notebooks)
    selected = select_notebooks(list_notebooks(notebooks_dir), parse_only(args.only))
    out_dir = Path(args.out).expanduser()
    if out_dir.resolve() == notebooks_dir.resolve():
        raise TourError("--out must differ from the notebooks folder (it would overwrite them)")
    timeout = args.timeout
    if timeout is None:
        timeout = DEFAULT_SMOKE_TIMEOUT if args.smoke else DEFAULT_TIMEOUT
    # validate the kernel once, before any notebook runs
    _kernel_extra_arguments(args.kernel)
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
            if run.ok:
                passed += 1
            else:
                failed += 1
    except KeyboardInterrupt:
        interrupted_name = interrupted_name or "between notebooks"
    if interrupted_name is not None:
        print(f"interrupted: {interrupted_name} (kernel shut down)", flush=True)
    print(f"executed notebooks are in {out_dir}", flush=True)
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
