"""What a user's own tests look like: ``voicecalld.testing`` runs the daemon with Twilio, Plivo and
Telnyx played by the simulator, so calls can be placed and received.

A user's project loads the fixtures with ``pytest_plugins = ["voicecalld.testing"]`` in its root
``conftest.py``; the last test here runs the README's example project, verbatim, in a fresh
pytest. The others
use the fixture by importing it, as a test module of this suite must (the plugin module is
imported by other tests before any conftest could register it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio

from voicecalld.sim.state import SimStatus
from voicecalld.testing import SimulatedDaemon, voicecalld_sim  # noqa: F401 - the fixture

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_project() -> dict[str, str]:
    """The files of the README's *Testing your application* section, by name: every fenced
    block there whose first line is ``# <file name>``."""
    text = README.read_text()
    section = text.split("## Testing your application with voicecalld", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"^```\w*\n(.*?)^```", section, flags=re.M | re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("# "):
            files[first[2:].strip()] = rest
    return files


async def test_a_user_receives_a_call(voicecalld_sim: SimulatedDaemon) -> None:  # noqa: F811
    call = voicecalld_sim.sim.inbound("twilio", from_number="+14155550100", to="+15550000000")
    await call.streaming.wait()
    record = await voicecalld_sim.daemon_call(call, ended=True)
    assert (record["direction"], record["end_reason"]) == ("inbound", "completed")
    assert call.frames_sent > 0


async def test_a_user_places_a_call_that_is_busy(voicecalld_sim: SimulatedDaemon) -> None:  # noqa: F811
    record, call = await voicecalld_sim.place("telnyx", "+14155550486")
    ended = await voicecalld_sim.wait_ended(record["id"])
    assert ended["end_reason"] == "busy"
    await call.ended.wait()
    assert call.status is SimStatus.BUSY


async def test_the_readmes_example_project_passes_as_written(tmp_path: Path) -> None:
    files = readme_project()
    assert set(files) == {"pytest.ini", "test_daemon.py", "conftest.py", "test_calls.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = await trio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "3 passed" in output
