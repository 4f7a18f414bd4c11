"""The guide's claims as data: each notebook states what it set out to show, the target, what it measured and
whether the target was met, and the tour gathers those into ``SUMMARY.md`` and a picture of it.

A notebook's last cell calls :func:`claim` once per headline claim::

    nf.tour.claim("3", "a tiny GPT learns Shakespeare fast on a CPU",
                  target="val loss <= 1.88 in <= 0.5x nanoGPT's CPU time",
                  measured=f"{ratio:.2f}x ({best_188:.1f} s vs {nanogpt_seconds:.0f} s)",
                  passed=ratio <= 0.5)

which prints one ``CLAIM: {json}`` line on stdout. :func:`notebook_claims` reads those lines back out of an
executed notebook, and :func:`write_summary` writes the table (one row per claim, kept when the notebook
failed after stating it — notebooks assert their claims after :func:`claim` — plus a row for a notebook
that failed or stated no claim) and ``summary.png``. Smoke-mode runs are marked as such: their numbers
come from shrunken runs and say nothing about the guide's claims.

Standard library only at import time (matplotlib is imported inside :func:`write_summary`, and its absence
only skips the picture).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CLAIM_PREFIX = "CLAIM:"
SUMMARY_NAME = "SUMMARY.md"
PICTURE_NAME = "summary.png"
_FIELDS = ("part", "claim", "target", "measured")


def _smoke() -> bool:
    return os.environ.get("NANOFRONTIER_SMOKE", "") not in ("", "0")


def claim(part: str, claim: str, *, target: str, measured: str, passed: bool) -> dict[str, Any]:
    """State one of the guide's claims as measured by this notebook; prints a ``CLAIM:`` line and returns
    the record.

    ``part`` names the guide's part (``"3"``, ``"5a"``); ``claim`` says in plain words what is shown;
    ``target`` is the bar it must clear and ``measured`` what this run got (both free text, with units);
    ``passed`` whether the target was met on this run (a real ``bool``: ``True``/``False`` or a numpy bool).
    """
    values = {"part": part, "claim": claim, "target": target, "measured": measured}
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"claim(): {name} must be a non-empty str, got {value!r}")
        if "\n" in value:
            raise ValueError(f"claim(): {name} must be one line, got {value!r}")
    # numpy's bool_ is not a bool subclass; accept it by name rather than importing numpy here
    if not (isinstance(passed, bool) or type(passed).__name__ in ("bool_", "bool")):
        raise TypeError(f"claim(): passed must be a bool, got {type(passed).__name__} {passed!r}")
    record: dict[str, Any] = {k: v.strip() for k, v in values.items()}
    record["passed"] = bool(passed)
    record["smoke"] = _smoke()
    print(f"{CLAIM_PREFIX} {json.dumps(record, ensure_ascii=False)}", flush=True)
    return record


def _stdout_lines(nb: Any) -> Iterable[str]:
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") != "stream" or output.get("name") != "stdout":
                continue
            text = output.get("text", "")
            if isinstance(text, list):
                text = "".join(text)
            yield from text.splitlines()


def notebook_claims(nb: Any) -> list[dict[str, Any]]:
    """Every ``CLAIM:`` record printed by an executed notebook, in order. A malformed line becomes a record
    with ``passed=False`` that says what was wrong, so it shows in the summary rather than vanishing."""
    out = []
    for line in _stdout_lines(nb):
        if not line.startswith(CLAIM_PREFIX):
            continue
        raw = line[len(CLAIM_PREFIX) :].strip()
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _FIELDS):
                raise ValueError("missing fields")
            record["passed"] = bool(record.get("passed"))
            record["smoke"] = bool(record.get("smoke"))
        except ValueError as exc:
            record = {"part": "?", "claim": "unreadable CLAIM line", "target": "-", "measured": raw[:80],
                      "passed": False, "smoke": False, "error": str(exc)}
        out.append(record)
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_rows(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per claim of each run (``NotebookRun``-like: ``name``, ``ok``, ``seconds``, ``claims``,
    ``detail()``); a notebook without claims gets a single row that says so. A failed notebook keeps the
    rows of the claims it stated before it stopped (a notebook asserts its claim after stating it, so a
    missed claim shows what was measured) and gets one more row with its error."""
    rows = []
    for run in runs:
        claims = list(getattr(run, "claims", []) or [])
        for c in claims:
            rows.append({"notebook": run.name, "part": c["part"], "claim": c["claim"], "target": c["target"],
                         "measured": c["measured"], "status": "pass" if c["passed"] else "MISSED",
                         "seconds": run.seconds})
        if not run.ok:
            rows.append({"notebook": run.name, "part": "-", "claim": "(the notebook failed)", "target": "-",
                         "measured": run.detail(), "status": "FAIL", "seconds": run.seconds})
        elif not claims:
            rows.append({"notebook": run.name, "part": "-", "claim": "(no CLAIM line)", "target": "-",
                         "measured": run.detail(), "status": "no claim", "seconds": run.seconds})
    return rows


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_summary(out_dir: Path | str, runs: Sequence[Any], *, smoke: bool) -> Path:
    """Write ``SUMMARY.md`` (and ``summary.png`` when matplotlib is installed) into ``out_dir``; returns the
    path of the markdown file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    n_pass = sum(r["status"] == "pass" for r in rows)
    total = sum(r.seconds for r in runs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    mode = "SMOKE mode (shrunken runs: these numbers test the code, not the claims)" if smoke else "full mode"
    lines = [
        "# The guide's claims, as measured on this machine",
        "",
        (
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {mode}; "
            f"{len(runs)} notebook(s) in {total:.0f} s; load average at the end {load:.1f}; "
            f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}."
        ),
        "",
        f"**{n_pass} of {len(rows)} claims met.**",
        "",
        "| part | claim | target | measured | result | notebook | time |",
        "|---|---|---|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r['part'])} | {_cell(r['claim'])} | {_cell(r['target'])} | {_cell(r['measured'])} | "
            f"{r['status']} | {_cell(r['notebook'])} | {r['seconds']:.0f} s |"
        )
    picture = _draw(out_dir / PICTURE_NAME, rows, smoke)
    if picture:
        lines += ["", f"![the claims]({PICTURE_NAME})"]
    path = out_dir / SUMMARY_NAME
    _write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


_COLORS = {"pass": "#2e7d32", "MISSED": "#ef6c00", "FAIL": "#c62828", "no claim": "#757575"}


def _draw(path: Path, rows: list[dict[str, Any]], smoke: bool) -> bool:
    """One bar per claim: its notebook's wall time, coloured by the result, labelled with the claim and the
    measured value against the target. Returns False (no picture) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if not rows:
        return False
    fig = Figure(figsize=(11, 0.55 * len(rows) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(rows)))[::-1]
    secs = [r["seconds"] for r in rows]
    ax.barh(ys, secs, color=[_COLORS.get(r["status"], "#757575") for r in rows], alpha=0.35)
    right = max(secs) if max(secs) > 0 else 1.0
    for y, r in zip(ys, rows):
        who = f"Part {r['part']}" if r["part"] not in ("-", "?") else r["notebook"]
        label = f"{who}: {r['claim']}"
        ax.text(right * 0.01, y + 0.12, _shorten(label, 95), va="bottom", fontsize=8)
        ax.text(right * 0.01, y - 0.12, _shorten(f"{r['status']}: {r['measured']}  (target {r['target']})", 105),
                va="top", fontsize=7, color="#222222")
    ax.set_yticks([])
    ax.set_xlabel("notebook wall time, seconds")
    met = sum(r["status"] == "pass" for r in rows)
    ax.set_title(f"the guide's claims: {met} of {len(rows)} met{' (smoke mode)' if smoke else ''}")
    ax.set_xlim(0, right * 1.05)
    fig.tight_layout()
    buf = path.with_name(f".{path.name}.tmp")
    fig.savefig(buf, format="png", dpi=110)
    os.replace(buf, path)
    return True


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
