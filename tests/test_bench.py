"""The benchmarks in bench/ as a reader and CI meet them: runnable, documented, found by run-all.

Nothing here measures anything (no timed assertions in tests): each script must be an
executable Python script that answers ``--help`` and offers ``--quick`` (the form CI runs through
``bench/run-all --quick``), and run-all must find exactly the scripts and keep its ``RESULT``
convention, which is checked on stand-in scripts in a temporary bench/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(
    path.name
    for path in BENCH.iterdir()
    if path.is_file() and "." not in path.name and path.name != "run-all"
)
OURS = ("api", "startup", "webhook", "store", "websocket", "g711")


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_benchmarks_are_there() -> None:
    assert set(OURS) <= set(SCRIPTS)


@pytest.mark.parametrize("name", [*SCRIPTS, "run-all"])
def test_a_benchmark_is_an_executable_python_script(name: str) -> None:
    path = BENCH / name
    assert os.access(path, os.X_OK), f"chmod +x bench/{name}"
    assert path.read_text().startswith("#!/usr/bin/env python3\n")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_explains_itself_and_has_a_quick_form(name: str) -> None:
    done = run(BENCH / name, "--help")
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout


def test_run_all_lists_every_benchmark_and_nothing_else() -> None:
    done = run(BENCH / "run-all", "--list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == SCRIPTS


def _script(directory: Path, name: str, body: str, *, executable: bool = True) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env python3\n" + body)
    path.chmod(0o755 if executable else 0o644)


@pytest.fixture
def stand_in_bench(tmp_path: Path) -> Path:
    """A bench/ with run-all and stand-in scripts: one per way a script can behave."""
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy2(BENCH / "run-all", bench / "run-all")
    quick_flag = textwrap.dedent("""
        import argparse, json
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        args = parser.parse_args()
    """)
    _script(
        bench,
        "good",
        quick_flag
        + textwrap.dedent("""
        print("RESULT " + json.dumps({"figures": {"thing/s": 1234}, "ratio": 1.5}))
        print("RESULT " + json.dumps({"figures": {"thing/s": 5678}, "ratio": 0.9,
                                      "goal": "ratio >= 0.8", "met": args.quick}))
        """),
    )
    _script(bench, "plain", quick_flag + 'print("plain figure 42")\nprint()\n')
    _script(bench, "broken", quick_flag + 'print("about to fail")\nraise SystemExit(3)\n')
    _script(bench, "full-only", 'print("took an hour")\n')
    _script(bench, "syntax-error", quick_flag + "print(\n")
    _script(bench, "not-executable", 'print("never run")\n', executable=False)
    _script(bench, "helper.py", 'print("a module, not a benchmark")\n')
    return bench


def test_run_all_finds_executable_scripts_without_extension(stand_in_bench: Path) -> None:
    done = run(stand_in_bench / "run-all", "--list", cwd=stand_in_bench)
    assert done.stdout.split() == ["broken", "full-only", "good", "plain", "syntax-error"]


def test_run_all_quick_tabulates_results_and_fails_on_a_failure(stand_in_bench: Path) -> None:
    done = run(stand_in_bench / "run-all", "--quick", cwd=stand_in_bench)
    assert done.returncode == 1, done.stdout + done.stderr
    table = done.stdout.split("\n5 benchmarks in ")[1].splitlines()[1:]
    rows = {line.split()[0]: line for line in table}
    assert set(rows) == {"bench", "broken", "full-only", "good", "plain", "syntax-error"}
    assert "thing/s 5,678" in rows["good"]  # the last RESULT line wins
    assert "ratio >= 0.8" in rows["good"]
    assert rows["good"].split()[3:5] == ["0.9", "ratio"]  # ratio, then the goal
    assert " yes " in rows["good"]
    assert "(last line) plain figure 42" in rows["plain"]
    assert "failed (exit 3)" in rows["broken"]
    assert "(last line) about to fail" in rows["broken"]
    assert "skipped (no --quick)" in rows["full-only"]
    assert "failed (--help exit 1)" in rows["syntax-error"]  # never skipped in silence
    assert "took an hour" not in done.stdout


def test_run_all_runs_only_the_benchmarks_named(stand_in_bench: Path) -> None:
    done = run(stand_in_bench / "run-all", "good", cwd=stand_in_bench)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== good" in done.stdout
    assert "== plain" not in done.stdout
    assert " NO " in done.stdout  # the full form did not meet the goal: reported, not failed
    unknown = run(stand_in_bench / "run-all", "nope", cwd=stand_in_bench)
    assert unknown.returncode == 2
    assert "no benchmark nope" in unknown.stderr
