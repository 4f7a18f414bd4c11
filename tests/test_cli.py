"""Tests of the ``nanofrontier`` command line (``nanofrontier tour``).

The tour runs real Jupyter kernels on the tiny fixtures in tests/data, copied into a
temporary notebooks folder as 01_tiny_ok.ipynb and 02_tiny_fail.ipynb.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanofrontier import tour as cli

DATA = Path(__file__).resolve().parent / "data"
OK_LINE = re.compile(r"^01_tiny_ok\s+OK\s+\d+\.\d+s\s+(?P<headline>.*)$", re.M)
FAIL_LINE = re.compile(r"^02_tiny_fail\s+FAIL\s+\d+\.\d+s\s+(?P<detail>.*)$", re.M)


@pytest.fixture
def notebooks(tmp_path: Path) -> Path:
    d = tmp_path / "notebooks"
    d.mkdir()
    shutil.copy(DATA / "tiny_ok.ipynb", d / "01_tiny_ok.ipynb")
    shutil.copy(DATA / "tiny_fail.ipynb", d / "02_tiny_fail.ipynb")
    (d / "README.md").write_text("not a notebook\n")
    (d / "scratch.ipynb").write_text("{}")  # no NN_ prefix: never selected
    return d


def tour(capsys, notebooks: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    rc = cli.main(["tour", "--notebooks", str(notebooks), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def stdout_text(nb: dict) -> str:
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


# ------------------------------------------------------------------ the command line


def test_help_lists_tour(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "tour" in out
    assert cli.main(["tour", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--smoke", "--only", "--out", "--notebooks", "--timeout", "--kernel"):
        assert flag in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("nanofrontier ")
    assert len(out.split()) == 2


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "tour" in capsys.readouterr().err


def test_bad_option_is_a_usage_error(capsys):
    assert cli.main(["tour", "--timeout", "soon"]) == 2


# ------------------------------------------------------------------ running notebooks


def test_ok_notebook_prints_headline_and_writes_executed_copy(capsys, notebooks, tmp_path):
    out = tmp_path / "tour_out"
    rc, stdout, _ = tour(capsys, notebooks, out, "--only", "01")
    assert rc == 0, stdout
    m = OK_LINE.search(stdout)
    assert m, stdout
    # the LAST RESULT line wins; the kernel runs in the notebooks folder
    assert m.group("headline") == "tiny ok 2+2=4 smoke=unset cwd=notebooks"
    assert "02_tiny_fail" not in stdout
    assert last_line(stdout) == "1 passed, 0 failed"

    executed = json.loads((out / "01_tiny_ok.ipynb").read_text())
    assert "RESULT: tiny ok 2+2=4" in stdout_text(executed)
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == [1, 2, 3]
    assert executed["metadata"]["language_info"]["name"] == "python"
    assert not list(out.glob("*.tmp")), "atomic write left a temporary file behind"
    # the source notebook is untouched
    assert stdout_text(json.loads((notebooks / "01_tiny_ok.ipynb").read_text())) == ""

    # SUMMARY.md: one row per claim the notebook stated, with the result and the notebook's time
    summary = (out / "SUMMARY.md").read_text()
    assert "full mode" in summary and "**1 of 2 claims met.**" in summary, summary
    rows = [line for line in summary.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2, summary
    assert rows[0].startswith("| 0 | two and two make four | 4 | 4 | pass | 01_tiny_ok |"), rows[0]
    assert rows[1].startswith("| 0b | a claim this run missed | > 1 s | 0.1 s | MISSED |"), rows[1]
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "summary.png" in summary


def test_failing_notebook_reports_fail_exit_1_and_still_writes_output(capsys, notebooks, tmp_path):
    out = tmp_path / "out"
    rc, stdout, _ = tour(capsys, notebooks, out)
    assert rc == 1, stdout
    assert OK_LINE.search(stdout), stdout
    m = FAIL_LINE.search(stdout)
    assert m, stdout
    assert m.group("detail") == "ValueError: tiny boom (cell 2)"
    assert "second line" not in stdout
    assert last_line(stdout) == "1 passed, 1 failed"
    # in order: 01 before 02
    assert stdout.index("01_tiny_ok") < stdout.index("02_tiny_fail")

    executed = json.loads((out / "02_tiny_fail.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["ValueError"]
    assert "never runs" not in stdout_text(executed)
    assert (out / "01_tiny_ok.ipynb").exists()
    # a failed notebook is a row of SUMMARY.md that says so, with its error
    summary = (out / "SUMMARY.md").read_text()
    fail_rows = [line for line in summary.splitlines() if "02_tiny_fail" in line]
    assert len(fail_rows) == 1 and "| FAIL |" in fail_rows[0] and "tiny boom" in fail_rows[0], summary


def test_a_notebook_failing_its_assert_keeps_its_claim_and_the_tour_goes_on(capsys, tmp_path):
    # like the guide's notebooks: state the claim, then assert it (in full mode); the next notebook still runs
    d = tmp_path / "notebooks"
    d.mkdir()
    nb = json.loads((DATA / "tiny_fail.ipynb").read_text())
    nb["cells"][2]["source"] = [
        "import nanofrontier as nf\n",
        "nf.tour.claim('9', 'a claim that fails its assert', target='>= 90%', measured='85.0%',\n",
        "              passed=False)\n",
        "assert False, 'the claim did not hold on this run'",
    ]
    (d / "01_claim_fail.ipynb").write_text(json.dumps(nb))
    shutil.copy(DATA / "tiny_ok.ipynb", d / "02_tiny_ok.ipynb")
    out = tmp_path / "out"
    rc, stdout, _ = tour(capsys, d, out)
    assert rc == 1 and last_line(stdout) == "1 passed, 1 failed", stdout
    fail = r"^01_claim_fail\s+FAIL .*AssertionError: the claim did not hold on this run \(cell 2\)$"
    assert re.search(fail, stdout, re.M), stdout
    summary = (out / "SUMMARY.md").read_text()
    rows = [line for line in summary.splitlines() if "01_claim_fail" in line]
    assert len(rows) == 2, summary
    want = "| 9 | a claim that fails its assert | >= 90% | 85.0% | MISSED | 01_claim_fail |"
    assert rows[0].startswith(want), rows[0]
    assert "| FAIL |" in rows[1] and "the claim did not hold" in rows[1], rows[1]
    assert "02_tiny_ok" in summary and "**1 of 4 claims met.**" in summary, summary


@pytest.mark.parametrize("only", [["2"], ["02"], ["2,"]])
def test_only_selects_by_numeric_prefix(capsys, notebooks, tmp_path, only):
    args = [a for o in only for a in ("--only", o)]
    rc, stdout, _ = tour(capsys, notebooks, tmp_path / "out", *args)
    assert rc == 1
    assert "01_tiny_ok" not in stdout
    assert FAIL_LINE.search(stdout)
    assert last_line(stdout) == "0 passed, 1 failed"
    assert not (tmp_path / "out" / "01_tiny_ok.ipynb").exists()


def test_unknown_selection_exits_2_listing_prefixes(capsys, notebooks, tmp_path):
    rc, stdout, stderr = tour(capsys, notebooks, tmp_path / "out", "--only", "01", "--only", "7")
    assert rc == 2
    assert "7" in stderr and "available: 01, 02" in stderr
    assert "passed" not in stdout
    assert not (tmp_path / "out").exists()


def test_smoke_sets_env_in_kernel_and_plain_run_unsets_it(capsys, notebooks, tmp_path, monkeypatch):
    monkeypatch.delenv(cli.SMOKE_ENV, raising=False)
    rc, stdout, _ = tour(capsys, notebooks, tmp_path / "smoke", "--smoke", "--only", "1")
    assert rc == 0, stdout
    assert OK_LINE.search(stdout).group("headline").endswith("smoke=1 cwd=notebooks")
    assert "smoke mode" in stdout and "600s per cell" in stdout
    assert cli.SMOKE_ENV not in os.environ  # restored after the tour

    # a value left in the user's environment does not leak into a full run
    monkeypatch.setenv(cli.SMOKE_ENV, "1")
    rc, stdout, _ = tour(capsys, notebooks, tmp_path / "full", "--only", "01")
    assert rc == 0, stdout
    assert "smoke=unset" in OK_LINE.search(stdout).group("headline")
    assert os.environ[cli.SMOKE_ENV] == "1"


def test_notebooks_found_in_cwd(capsys, notebooks, tmp_path, monkeypatch):
    monkeypatch.chdir(notebooks.parent)  # has ./notebooks
    rc = cli.main(["tour", "--only", "01"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert OK_LINE.search(stdout)
    assert (notebooks.parent / "tour_out" / "01_tiny_ok.ipynb").exists()  # default --out


def test_empty_notebooks_dir_exits_2(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, stderr = tour(capsys, empty, tmp_path / "out")
    assert rc == 2
    assert "--notebooks" in stderr
    rc, _, stderr = tour(capsys, tmp_path / "missing", tmp_path / "out")
    assert rc == 2


def test_out_must_not_be_the_notebooks_folder(capsys, notebooks):
    rc, _, stderr = tour(capsys, notebooks, notebooks)
    assert rc == 2
    assert "overwrite" in stderr


def test_unknown_kernel_exits_2(capsys, notebooks, tmp_path):
    rc, _, stderr = tour(capsys, notebooks, tmp_path / "out", "--kernel", "no-such-kernel-xyz")
    assert rc == 2
    assert "no-such-kernel-xyz" in stderr


def test_missing_notebook_extras_gives_install_hint(capsys, notebooks, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nbclient", None)  # makes `import nbclient` fail
    rc, _, stderr = tour(capsys, notebooks, tmp_path / "out")
    assert rc == 2
    assert "pip install 'nanofrontier[notebooks]'" in stderr


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
def test_ctrl_c_shuts_kernel_down_and_returns_130(notebooks, tmp_path):
    """SIGINT during a long cell: the kernel is shut down and what finished is printed."""
    pid_file = tmp_path / "kernel.pid"
    nbformat = pytest.importorskip("nbformat")
    from nbformat.v4 import new_code_cell, new_notebook

    slow = new_notebook(
        cells=[
            new_code_cell(
                "import os, time\n"
                f"open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
                f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})"
            ),
            new_code_cell("time.sleep(120)"),
            new_code_cell("print('RESULT: should not get here')"),
        ]
    )
    nbformat.write(slow, str(notebooks / "03_slow.ipynb"))
    env = dict(os.environ)
    package_parent = str(Path(cli.__file__).resolve().parents[2])  # python/nanofrontier/tour/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanofrontier", "tour", "--notebooks", str(notebooks),
         "--out", str(tmp_path / "out"), "--only", "1,3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the slow notebook never started"
            time.sleep(0.2)
        kernel_pid = int(pid_file.read_text())
        time.sleep(0.5)  # let the sleeping cell start
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert OK_LINE.search(stdout), stdout
    assert "interrupted: 03_slow stopped at cell 1" in stdout
    assert last_line(stdout) == "1 passed, 0 failed"
    assert "Traceback" not in stderr, stderr
    assert (tmp_path / "out" / "03_slow.ipynb").exists()
    assert not _alive(kernel_pid), "the kernel survived the interrupt"


def _alive(pid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie counts as gone
            if " Z" in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]:
                return False
        except OSError:
            return False
        time.sleep(0.2)
    return True


# ------------------------------------------------------------------ pure helpers


def test_select_notebooks_prefixes():
    names = ["01_a.ipynb", "02_b.ipynb", "05a_rlhf_ppo.ipynb", "05b_dpo.ipynb", "10_last.ipynb"]
    nbs = [Path(n) for n in names]

    def sel(*only):
        return [p.name for p in cli.select_notebooks(nbs, cli.parse_only(only))]

    assert sel() == names
    assert sel("1") == ["01_a.ipynb"]
    assert sel("01", "10") == ["01_a.ipynb", "10_last.ipynb"]
    assert sel("10,2") == ["02_b.ipynb", "10_last.ipynb"]  # notebook order, not argument order
    assert sel("05a") == ["05a_rlhf_ppo.ipynb"]
    assert sel("5B") == ["05b_dpo.ipynb"]
    assert sel("5") == ["05a_rlhf_ppo.ipynb", "05b_dpo.ipynb"]
    with pytest.raises(cli.TourError, match=r"available: 01, 02, 05a, 05b, 10"):
        sel("05c")
    with pytest.raises(cli.TourError):
        sel("x")


def test_list_notebooks_sorted_and_filtered(tmp_path):
    for name in ["02_b.ipynb", "01_a.ipynb", "notes.ipynb", "01_a.py", "03c_x.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in cli.list_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "03c_x.ipynb"]
    assert cli.notebook_prefix("03c_x.ipynb") == "03c"
    assert cli.notebook_prefix("notes.ipynb") is None


def test_result_headline_takes_last_stdout_result_line():
    nb = {
        "cells": [
            {"cell_type": "code", "outputs": [
                {"output_type": "stream", "name": "stdout", "text": "RESULT: first\nother\n"},
            ]},
            {"cell_type": "markdown", "source": "RESULT: not an output"},
            {"cell_type": "code", "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["x\n", "RESULT:  second  \n"]},
                {"output_type": "stream", "name": "stderr", "text": "RESULT: stderr ignored\n"},
                {"output_type": "execute_result", "data": {"text/plain": "'RESULT: no'"}},
            ]},
        ]
    }
    assert cli.result_headline(nb) == "second"
    assert cli.result_headline({"cells": []}) is None


def test_claim_prints_a_line_that_reads_back(capsys, monkeypatch):
    monkeypatch.setenv("NANOFRONTIER_SMOKE", "1")
    record = cli.claim("5a", "PPO makes it answer", target=">= 90%", measured="93% | 12 s", passed=True)
    out = capsys.readouterr().out
    assert out.startswith("CLAIM: ") and out.count("\n") == 1, out
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout",
                                                      "text": "noise\n" + out + "CLAIM: {not json\n"}]}]}
    claims = cli.notebook_claims(nb)
    assert claims[0] == record == {"part": "5a", "claim": "PPO makes it answer", "target": ">= 90%",
                                   "measured": "93% | 12 s", "passed": True, "smoke": True}
    # a malformed line is not dropped: it shows as a missed claim saying what was wrong
    assert claims[1]["passed"] is False and claims[1]["claim"] == "unreadable CLAIM line"
    np = pytest.importorskip("numpy")
    assert cli.claim("1", "x", target="y", measured="z", passed=np.float32(0.5) > 0.1)["passed"] is True


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"part": "", "claim": "c", "target": "t", "measured": "m", "passed": True}, TypeError),
        ({"part": 3, "claim": "c", "target": "t", "measured": "m", "passed": True}, TypeError),
        ({"part": "3", "claim": "c", "target": "t", "measured": "two\nlines", "passed": True}, ValueError),
        ({"part": "3", "claim": "c", "target": "t", "measured": "m", "passed": "yes"}, TypeError),
        ({"part": "3", "claim": "c", "target": "t", "measured": "m", "passed": 1.0}, TypeError),
    ],
)
def test_claim_refuses_what_it_cannot_report(kwargs, error, capsys):
    with pytest.raises(error):
        cli.claim(kwargs.pop("part"), kwargs.pop("claim"), **kwargs)
    assert capsys.readouterr().out == ""


def test_summary_marks_smoke_mode_and_notebooks_without_claims(tmp_path):
    ok = cli.NotebookRun(path=Path("03_x.ipynb"), ok=True, seconds=12.0, headline="h")
    path = cli.write_summary(tmp_path, [ok], smoke=True)
    text = path.read_text()
    assert "SMOKE mode" in text and "| - | (no CLAIM line) | - | h | no claim | 03_x | 12 s |" in text, text
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_module_imports_only_stdlib_at_top_level():
    """The tour package must not import the compiled extension (nor anything heavy) at import time:
    each of its modules imports the standard library and, relatively, its sibling modules only."""
    package = Path(cli.__file__).resolve().parent
    siblings = {p.stem for p in package.glob("*.py")}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top_level.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1 and node.module in siblings, (path.name, node.module)
                else:
                    top_level.add((node.module or "").split(".")[0])
        assert top_level <= stdlib, (path.name, top_level - stdlib)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("nanofrontier"), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("nanofrontier") for a in node.names), path.name
