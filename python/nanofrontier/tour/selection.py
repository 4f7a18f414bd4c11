"""Which notebooks the tour runs: find the folder, list its ``NN_*.ipynb``, apply ``--only``.

Prefixes: ``01_neural_networks.ipynb`` is ``"01"``, ``05a_rlhf_ppo.ipynb`` is ``"05a"``. A selector ``5``
selects 05, 05a, 05b ...; ``05a`` selects only 05a. Standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import TourError

# "01_neural_networks.ipynb" -> ("01", ""), "05a_rlhf_ppo.ipynb" -> ("05", "a")
_NOTEBOOK_RE = re.compile(r"^(\d+)([A-Za-z]*)_.*\.ipynb$")
_SELECTOR_RE = re.compile(r"^(\d+)([A-Za-z]*)$")


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
        # python/nanofrontier/tour/selection.py -> <repo>/notebooks (editable installs, PYTHONPATH=python)
        Path(__file__).resolve().parents[3] / "notebooks",
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
