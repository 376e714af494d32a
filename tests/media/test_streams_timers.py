"""The media timers, on trio's mock clock: ``start_timeout``, ``stream_grace``, draining.

The daemon starts with the clock frozen (its start-up waits for threads, and an autojump clock
would jump over them to the nearest deadline); each test sets the call up the same way, then
lets the clock jump (``autojump_threshold = 0``) for the wait that spans the timer. A wait that
may see the daemon's store thread at work passes ``within=math.inf``: the clock jumps to the
nearest deadline whenever the loop is idle, and a test's own deadline must never be it.
"""

from __future__ import annotations

import math
from pathlib import Path

import trio
import trio.testing
from trio.testing import MockClock

from tests.media.support import STREAM_LOST, Peer, Rig, carrier_message, media_rig
from voicecalld.calls.model import Call, EndReason
from voicecalld.media.websocket import CloseCode

SID = "CA11111111111111111111111111111111"
GRACE = 1.0


async def started_stream(rig: Rig, token: str) -> tuple[Peer, Peer]:
    carrier = await rig.carrier("mock")
    carrier.ws.send_text(carrier_message("twilio", "start", {"t0k3n": token}))
    bridge = await rig.app.next()
    assert (await bridge.json())["type"] == "start"
    return carrier, bridge


async def next_stream(rig: Rig, token: str, bridge: Peer) -> Peer:
    """Another stream of a call, started with ``token``, once the call's ``bridge`` hears it
    (the caller's audio, and no ``start``: the bridge is the call's, not the stream's)."""
    carrier = await rig.carrier("mock")
    carrier.ws.send_text(carrier_message("twilio", "start", {"t0k3n": token}))
    carrier.ws.send_text(carrier_message("twilio", "media"))
    assert await bridge.binary() == b"\x7e" * 160
    return carrier


def on_end(rig: Rig) -> tuple[trio.Event, list[Call]]:
    """An event set when a call ends, and the calls that ended."""
    ended, calls = trio.Event(), []

    def hook(call: Call) -> None:
        calls.append(call)
        ended.set()

    rig.daemon.manager.ended_hooks.append(hook)
    return ended, calls


async def test_a_stream_must_start_within_start_timeout(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with media_rig(tmp_path, media={"start_timeout": 2.0}) as rig:
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(carrier_message("twilio", "connected"))  # not a start
        mock_clock.autojump_threshold = 0
        opened = trio.current_time()
        closed, _ = await carrier.closed()
        assert trio.current_time() - opened == 2.0
        assert (closed.code, closed.reason) == (
            CloseCode.POLICY_VIOLATION,
            "no start message in time",
        )
        assert rig.counter("streams_refused", reason="start-timeout") == 1
        await trio.testing.wait_all_tasks_blocked()  # the daemon's side of the close is done
        assert rig.daemon.runtime.metrics.streams.collect() == {(): 0.0}


async def test_a_lost_stream_ends_the_call_and_its_bridge_after_the_grace(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    """The bridge waits out the grace with the call (the app hears nothing meanwhile), then
    hears ``stop`` and is closed as the call ends ``stream-lost``."""
    async with media_rig(tmp_path, calls={"stream_grace": GRACE}) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier, bridge = await started_stream(rig, token)
        ended, calls = on_end(rig)
        mock_clock.autojump_threshold = 0
        await carrier.ws.close()
        with trio.move_on_after(GRACE * 0.9):
            message = await bridge.receive(within=math.inf)
            raise AssertionError(f"the app heard {message} during the grace")
        assert call_id in rig.daemon.manager.calls, "ended before the grace was over"
        assert await bridge.json(within=math.inf) == STREAM_LOST
        closed, unread = await bridge.closed(within=math.inf)
        assert (closed.code, closed.by_peer, unread) == (CloseCode.NORMAL, True, [])
        await ended.wait()
        assert [(c.id, c.end_reason) for c in calls] == [(call_id, EndReason.STREAM_LOST)]


async def test_a_new_stream_within_the_grace_keeps_the_call_and_its_bridge(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with media_rig(tmp_path, calls={"stream_grace": GRACE}) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier, bridge = await started_stream(rig, token)
        await carrier.ws.close()
        await carrier.closed()
        # the carrier comes back with the token of a new webhook answer: same bridge
        carrier = await next_stream(rig, rig.daemon.manager.issue_token(call_id), bridge)
        mock_clock.autojump_threshold = 0
        await trio.sleep(GRACE * 3)
        assert call_id in rig.daemon.manager.calls
        carrier.ws.send_text(carrier_message("twilio", "media"))
        assert await bridge.binary(within=math.inf) == b"\x7e" * 160
        assert rig.app.nothing_pending()


async def test_a_new_stream_supersedes_the_old_one_and_the_call_goes_on(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with media_rig(tmp_path, calls={"stream_grace": GRACE}) as rig:
        call_id, token = await rig.mock_call(SID)
        old_carrier, bridge = await started_stream(rig, token)
        carrier = await next_stream(rig, rig.daemon.manager.issue_token(call_id), bridge)
        closed, _ = await old_carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.NORMAL, "superseded by a new stream")
        mock_clock.autojump_threshold = 0
        await trio.sleep(GRACE * 3)  # the old stream's end started no grace period
        assert call_id in rig.daemon.manager.calls
        carrier.ws.send_text(carrier_message("twilio", "media"))
        # the old stream's bridge is the new one's: no stop, no new start, the caller's audio
        assert await bridge.binary(within=math.inf) == b"\x7e" * 160
        assert rig.app.nothing_pending()
        events = [(e["type"], e.get("reason")) for e in await rig.events(call_id, within=math.inf)]
        # The first three stream events; the old stream's end and the new one's start race.
        # Later ones are not this test's: on an autojump clock each wait on the store's thread
        # jumps to the next timer, and a loaded machine can reach one that ends the call.
        streams = [event for event in events if event[0].startswith("stream.")]
        assert sorted(streams[:3]) == [
            ("stream.started", None),
            ("stream.started", None),
            ("stream.stopped", "superseded by a new stream"),
        ]


async def test_shutdown_drains_then_closes_streams_1001(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with media_rig(tmp_path, runtime={"drain_timeout": 3.0}) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier, bridge = await started_stream(rig, token)
        manager = rig.daemon.manager
        mock_clock.autojump_threshold = 0
        stopping = trio.current_time()
        rig.daemon.stop()
        closed, _ = await carrier.closed(within=math.inf)
        assert trio.current_time() - stopping >= 3.0
        assert (closed.code, closed.reason) == (CloseCode.GOING_AWAY, "voicecalld is shutting down")
        assert await bridge.json(within=math.inf) == {
            "type": "stop",
            "reason": "voicecalld is shutting down",
        }
        assert call_id in manager.calls, "shutting down does not end the call"
        closed, _ = await bridge.closed(within=math.inf)
        assert (closed.code, closed.reason) == (CloseCode.GOING_AWAY, "voicecalld is shutting down")


async def test_shutdown_between_two_streams_closes_the_bridge_1001(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    """A bridge waiting for its call's next stream is drained like a stream: up to
    ``drain_timeout``, then ``stop`` and 1001, and the call goes on."""
    settings = {"calls": {"stream_grace": 60.0}, "runtime": {"drain_timeout": 3.0}}
    async with media_rig(tmp_path, **settings) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier, bridge = await started_stream(rig, token)
        await carrier.ws.close()
        await carrier.closed()
        mock_clock.autojump_threshold = 0
        stopping = trio.current_time()
        rig.daemon.stop()
        assert await bridge.json(within=math.inf) == {
            "type": "stop",
            "reason": "voicecalld is shutting down",
        }
        assert trio.current_time() - stopping >= 3.0
        closed, _ = await bridge.closed(within=math.inf)
        assert closed.code == CloseCode.GOING_AWAY
        assert call_id in rig.daemon.manager.calls, "shutting down does not end the call"
