"""What a user's own tests look like: ``voicecalld.testing`` runs the daemon with Twilio, Plivo and
Telnyx played by the simulator, so calls can be placed and received.

A user's project loads the fixtures with ``pytest_plugins = ["voicecalld.testing"]`` in its root
``conftest.py``; the last test here runs exactly such a project in a fresh pytest. The others
use the fixture by importing it, as a test module of this suite must (the plugin module is
imported by other tests before any conftest could register it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from voicecalld.sim.state import SimStatus
from voicecalld.testing import SimulatedDaemon, voicecalld_sim  # noqa: F401 - the fixture

USER_TEST = """
async def test_a_call_comes_in(voicecalld_sim):
    call = voicecalld_sim.sim.inbound("plivo", from_number="+14155550100", to="+15550000000")
    await call.streaming.wait()
    record = await voicecalld_sim.daemon_call(call, ended=True)
    assert record["direction"] == "inbound"
    assert record["end_reason"] == "completed"


async def test_a_call_goes_out(voicecalld_sim):
    record, call = await voicecalld_sim.place("twilio", "+14155550199")
    await call.streaming.wait()
    await voicecalld_sim.daemon.api.post(f"/v1/calls/{record['id']}/hangup")
    ended = await voicecalld_sim.wait_ended(record["id"])
    assert ended["end_reason"] == "hangup-bot"
"""


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


async def test_a_users_project_loads_the_fixtures_as_a_plugin(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["voicecalld.testing"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_calls.py").write_text(USER_TEST)
    result = await trio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "2 passed" in output
