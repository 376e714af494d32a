"""Stream loss (SPEC §7): a call whose media stream ends, and gets no new one within
``stream_grace``, is hung up ``stream-lost``; a new stream within the grace keeps it; a
superseded stream's close does not count; a failed hang-up is logged and retried.

``manager.stream_gone`` / ``stream_back`` are what the media layer calls; the superseding test
drives the real media layer over websockets, through the whole daemon. Time is a mock clock that
jumps once every task has been idle for 50 ms.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from tests.calls.support import (
    PROVIDERS,
    REST_PROVIDERS,
    Rig,
    at_carrier,
    hangup_endpoint,
    messages,
    rig,
)
from tests.support import wait_until
from voicecalld.calls.model import Call, EndReason, State
from voicecalld.media.connection import ConnectionClosed, WebSocket, connect
from voicecalld.sim.faults import Fault
from voicecalld.sim.state import SimStatus
from voicecalld.testing import Daemon, make_config, running

GRACE = 2.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def streaming(made: Rig, provider: str) -> Call:
    """An answered call with a media stream, as the manager holds it (its timers disarmed)."""
    call = await at_carrier(made, provider, SimStatus.IN_PROGRESS, answered_age=5.0)
    await made.save(call)
    made.running.adopt(call, arm=False)
    return call


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_new_stream_within_the_grace_hangs_up_stream_lost(
    tmp_path: Path, clock: trio.testing.MockClock, provider: str
) -> None:
    async with rig(tmp_path, stream_grace=GRACE) as made:
        manager = await made.start()
        call = await streaming(made, provider)
        manager.stream_gone(call.id)
        await trio.sleep(GRACE - 0.1)
        assert call.id in manager.calls
        await trio.sleep(0.2)
        assert call.id not in manager.calls
        assert (await made.stored(call.id)).end_reason is EndReason.STREAM_LOST
        await trio.sleep(1.0)
        assert await made.hung_up(provider, call)
        assert manager.owed_hangups == 0


async def test_a_new_stream_within_the_grace_keeps_the_call_and_the_next_loss_gets_a_full_grace(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, stream_grace=GRACE) as made:
        manager = await made.start()
        call = await streaming(made, "twilio")
        manager.stream_gone(call.id)
        await trio.sleep(GRACE - 0.5)
        manager.stream_back(call.id)
        await trio.sleep(10.0)
        assert call.id in manager.calls
        manager.stream_gone(call.id)
        await trio.sleep(GRACE - 0.1)
        assert call.id in manager.calls, "a full grace again, not what was left of the first"
        await trio.sleep(0.2)
        assert (await made.stored(call.id)).end_reason is EndReason.STREAM_LOST


async def test_a_stream_closed_before_the_speak_request_returned_waits_for_the_speech(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Twilio ends the stream to play ``<Say>``, possibly before its API answers the update:
    the grace still counts from the end of the speech (a simulator run found this)."""
    async with rig(tmp_path, stream_grace=GRACE) as made:
        manager = await made.start()
        call = await streaming(made, "twilio")
        text = "x" * 60  # estimated at 1 s + 60 / 15 s = 5 s
        manager.stream_gone(call.id)  # the stream closed while the request was in flight
        await manager.speak(call.id, text)
        await trio.sleep(5.0 + GRACE - 0.2)
        assert call.id in manager.calls, "within the speech and the grace after it"
        await trio.sleep(0.4)
        assert (await made.stored(call.id)).end_reason is EndReason.STREAM_LOST


async def test_stream_news_about_a_call_that_is_not_live_changes_nothing(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, stream_grace=GRACE) as made:
        manager = await made.start()
        call = await streaming(made, "twilio")
        await manager.end_call(call.id, EndReason.HANGUP_BOT)
        manager.stream_gone(call.id)
        manager.stream_gone("c_" + "0" * 24)
        await trio.sleep(GRACE * 2)
        assert (await made.stored(call.id)).end_reason is EndReason.HANGUP_BOT
        assert len(manager.timers) == 0


@pytest.mark.parametrize("provider", REST_PROVIDERS)
async def test_a_failed_hangup_after_stream_loss_is_logged_kept_and_retried(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    async with rig(tmp_path, stream_grace=GRACE) as made:
        endpoint = hangup_endpoint(provider, answered=True)
        made.sim.arm(endpoint, Fault(status=503, times=2))
        manager = await made.start()
        call = await streaming(made, provider)
        manager.stream_gone(call.id)
        await trio.sleep(GRACE + 0.5)  # ended, and the first attempt failed

        assert (await made.stored(call.id)).end_reason is EndReason.STREAM_LOST
        assert [c.id for c in await made.store.calls_owing_hangup()] == [call.id], "durable"
        assert not await made.hung_up(provider, call)
        failed = messages(caplog, "carrier hang-up failed; will retry")
        assert [(r.call_id, r.attempt) for r in failed] == [(call.id, 1)]  # type: ignore[attr-defined]
        assert "503" in failed[0].error  # type: ignore[attr-defined]

        await trio.sleep(10.0)  # retried after 2 s (fails again), then after 4 s
        assert len(made.sim.requests_to(endpoint)) == 3
        assert await made.hung_up(provider, call)
        assert await made.store.calls_owing_hangup() == []
        assert manager.owed_hangups == 0


# -- superseded streams, through the whole daemon and its media layer -----------------------


class Stream:
    """A carrier's media stream (the mock speaks Twilio's protocol), read until it closes."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.closed = trio.Event()
        self.code: int | None = None

    async def read(self) -> None:
        try:
            while True:
                await self.ws.receive_batch()
        except ConnectionClosed as closed:
            self.code = closed.code
        finally:
            self.closed.set()


async def open_stream(daemon: Daemon, call: Call, nursery: trio.Nursery) -> Stream:
    ws = await connect(f"ws://127.0.0.1:{daemon.port}/media/mock")
    token = daemon.manager.issue_token(call.id)  # what a webhook answer would carry
    stream_sid = "MZ" + token[:32]
    ws.send_text(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start = {
        "streamSid": stream_sid,
        "callSid": call.provider_call_id,
        "tracks": ["inbound"],
        "customParameters": {"token": token},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    ws.send_text(orjson.dumps({"event": "start", "streamSid": stream_sid, "start": start}))
    stream = Stream(ws)
    nursery.start_soon(stream.read)
    return stream


async def test_a_superseded_streams_close_does_not_end_the_call(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    config = make_config(tmp_path, calls={"stream_grace": GRACE})
    async with running(config) as daemon, trio.open_nursery() as nursery:
        placed = await daemon.api.post("/v1/calls", json={"to": "+14155550123"})
        call_id = placed.json()["id"]
        manager = daemon.manager
        await wait_until(lambda: manager.calls[call_id].answered_at is not None, every=0.5)
        first = await open_stream(daemon, manager.calls[call_id], nursery)
        await wait_until(lambda: manager.calls[call_id].state is State.ACTIVE, every=0.1)

        second = await open_stream(daemon, manager.calls[call_id], nursery)
        with trio.fail_after(5):
            await first.closed.wait()  # the daemon closed the superseded stream
        await trio.sleep(GRACE * 3)
        assert call_id in manager.calls, "the old stream's close is not the call's stream going"
        assert not second.closed.is_set()

        await second.ws.close()
        await trio.sleep(GRACE - 0.5)
        assert call_id in manager.calls, "within the grace"
        await trio.sleep(1.0)
        assert call_id not in manager.calls
        ended = (await daemon.api.get(f"/v1/calls/{call_id}")).json()
        assert ended["end_reason"] == "stream-lost"
