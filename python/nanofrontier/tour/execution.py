"""Running one notebook: a fresh kernel, per-cell timeouts, Ctrl-C, its outputs and its ``RESULT:`` line.

:func:`execute_notebook` runs a notebook with nbclient in a new kernel (working directory: the notebook's
folder unless told) and returns a :class:`NotebookRun`; it never raises for a notebook's own errors. The
headline is the text after ``RESULT:`` on the last stdout line of the notebook that starts with
``RESULT:``; its claims are the ``CLAIM:`` lines it printed (:mod:`.claims`).

Only the standard library at import time; nbclient / nbformat / jupyter_client / tqdm are imported lazily
inside the functions that need them (they are the ``notebooks`` extras).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claims import notebook_claims
from .errors import TourError

EXTRAS_HINT = "the tour needs the notebook extras: pip install 'nanofrontier[notebooks]'"
SMOKE_ENV = "NANOFRONTIER_SMOKE"
DEFAULT_TIMEOUT = 1800.0
DEFAULT_SMOKE_TIMEOUT = 600.0
RESULT_PREFIX = "RESULT:"
NO_RESULT = "(no RESULT line)"

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def require_notebook_extras() -> tuple[Any, Any]:
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
    nbformat, _ = require_notebook_extras()
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


def kernel_extra_arguments(kernel_name: str) -> list[str]:
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
    claims: list = field(default_factory=list)  # the CLAIM records it printed (.claims)

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
    nbformat, NotebookClient = require_notebook_extras()
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
        extra_arguments = kernel_extra_arguments(kernel_name)
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
            run.claims = notebook_claims(run.nb)
