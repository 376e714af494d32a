"""Who reads a live stream's websockets: the poller (raw sockets on Linux, the fast path) or a
task per websocket (TLS, or no epoll). Either way every message keeps its place: a DTMF digit
is recorded before the messages after it are handled, and a bug ends the stream loudly.

The carrier side is the mock carrier, which speaks Twilio's stream protocol on ``/media/mock``.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import orjson
import pytest

from tests.media.support import NO_GRACE, STREAM_LOST, carrier_message, media_rig
from tests.support import wait_until
from voicecalld.calls.model import EndReason
from voicecalld.carriers.base import StreamAudio, StreamEvent
from voicecalld.media import streams
from voicecalld.media.websocket import CloseCode, Codec, Role

SID = "CA11111111111111111111111111111111"


@pytest.fixture(params=["poller", "tasks"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the poller, then as on a system without it."""
    if request.param == "tasks":
        monkeypatch.setattr(streams, "POLLER_AVAILABLE", False)
    return str(request.param)


def twilio(name: str, changes: dict[str, str] | None = None) -> bytes:
    return carrier_message("twilio", name, changes)


def media(audio: bytes) -> bytes:
    message = orjson.loads(twilio("media"))
    message["media"]["payload"] = base64.b64encode(audio).decode()
    return orjson.dumps(message)


def dtmf(digit: str) -> bytes:
    return twilio("dtmf", {'"digit":"1"': f'"digit":"{digit}"'})


@pytest.mark.parametrize("when", ["with the start", "after the start"])
async def test_digits_are_recorded_in_their_place_among_the_audio(
    tmp_path: Path, reader: str, when: str
) -> None:
    """One read carries audio, digits and the stop (and the start, or not): the carrier's
    messages wait while each digit is recorded, then go on after it, in order."""
    messages = [
        media(b"\x01" * 160),
        dtmf("1"),
        media(b"\x02" * 160),
        dtmf("2"),
        dtmf("3"),
        media(b"\x03" * 160),
        twilio("stop"),
    ]
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        call_id, token = await rig.mock_call(SID)
        start = twilio("start", {"t0k3n": token})
        if when == "with the start":
            await rig.carrier_in_one_write("mock", [start, *messages])
        else:
            stream = await rig.carrier_in_one_write("mock", [start])
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        if when == "after the start":
            codec = Codec(Role.CLIENT)
            await stream.send_all(b"".join(codec.text(message) for message in messages))
        heard = [(await app.receive()).data for _ in range(7)]
        assert heard == [
            b"\x01" * 160,
            b'{"type":"dtmf","digit":"1"}',
            b"\x02" * 160,
            b'{"type":"dtmf","digit":"2"}',
            b'{"type":"dtmf","digit":"3"}',
            b"\x03" * 160,
            orjson.dumps(STREAM_LOST),
        ]
        events = [(e["type"], e.get("digit")) for e in await rig.events(call_id)]
        assert events[-6:] == [
            ("stream.started", None),
            ("call.dtmf", "1"),
            ("call.dtmf", "2"),
            ("call.dtmf", "3"),
            ("stream.stopped", None),
            ("call.ended", None),
        ]


async def test_both_ways_and_a_hang_up(tmp_path: Path, reader: str) -> None:
    async with media_rig(tmp_path) as rig:
        _, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(twilio("start", {"t0k3n": token}))
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        for n in range(1, 4):
            carrier.ws.send_text(media(bytes([n]) * 160))
            app.send_binary(bytes([n + 10]) * 160)
        assert [await app.binary() for _ in range(3)] == [bytes([n]) * 160 for n in (1, 2, 3)]
        played = [base64.b64decode((await carrier.json())["media"]["payload"]) for _ in range(3)]
        assert played == [bytes([n + 10]) * 160 for n in (1, 2, 3)]
        app.send_json({"type": "hangup"})
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.NORMAL, "the application hung up")


@pytest.mark.parametrize("first", ["app", "carrier"])
async def test_an_app_hang_up_that_comes_with_the_carriers_stop_ends_the_call(
    tmp_path: Path, reader: str, first: str
) -> None:
    """The stream is over with the carrier's ``stop``, but the app's ``hangup``, read in the
    same breath, is still done: the call ends ``hangup-bot``, not later ``stream-lost``."""
    async with media_rig(tmp_path) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(twilio("start", {"t0k3n": token}))
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        # both written before the daemon runs again: both sockets are ready at once
        if first == "app":
            app.send_json({"type": "hangup"})
            carrier.ws.send_text(twilio("stop"))
        else:
            carrier.ws.send_text(twilio("stop"))
            app.send_json({"type": "hangup"})
        await carrier.closed()
        await app.closed()
        await wait_until(lambda: call_id not in rig.daemon.manager.calls)
        ended = await rig.daemon.manager.get(call_id)
        assert ended.end_reason is EndReason.HANGUP_BOT


async def test_a_bug_in_handling_a_message_ends_the_stream_and_is_logged(
    tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        carrier_of_mock = rig.daemon.manager.carriers.get("mock")
        assert carrier_of_mock is not None
        protocol = carrier_of_mock.stream
        parse = protocol.parse

        def buggy(message: bytes) -> StreamEvent:
            event: StreamEvent = parse(message)
            if isinstance(event, StreamAudio):
                raise RuntimeError("a bug on the hot path")
            return event

        monkeypatch.setattr(protocol, "parse", buggy)
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(twilio("start", {"t0k3n": token}))
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        carrier.ws.send_text(twilio("media"))
        _, unread = await app.closed()
        assert [orjson.loads(m.data) for m in unread] == [STREAM_LOST]
        await carrier.closed()
        await rig.events(call_id)

        def errors() -> list[logging.LogRecord]:
            return [r for r in rig.logged.records if r.levelno >= logging.ERROR]

        await wait_until(errors)
        [error] = errors()
        assert error.getMessage() == "connection failed"
        assert "RuntimeError: a bug on the hot path" in logging.Formatter().format(error)
        rig.logged.records.clear()  # expected: the rig fails a test on any other error
