"""Twilio Media Streams on ``/media/twilio``, end to end, with Twilio's documented messages.

The call comes in through a webhook signed by Twilio's own SDK; the token is the one of the
TwiML answer's ``<Parameter>``; the stream speaks the messages of Twilio's documentation
(tests/carriers/samples/twilio/stream), and the application sits at ``media.bridge_url``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from tests.media.support import NO_GRACE, STREAM_LOST, Peer, Rig, carrier_message, media_rig
from voicecalld.media.websocket import CloseCode

SID = "CA11111111111111111111111111111111"
"""The ``callSid`` of the documented ``start``: the call's webhooks use it too."""
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALLER_AUDIO = b"\x7e" * 160
"""What the documented ``media`` message carries."""


def twilio(name: str, changes: dict[str, str] | None = None) -> bytes:
    return carrier_message("twilio", name, changes)


async def start_stream(rig: Rig, token: str) -> tuple[Peer, Peer]:
    """The carrier's stream, started with ``token``, and the bridge voicecalld opened."""
    carrier = await rig.carrier("twilio")
    carrier.ws.send_text(twilio("connected"))
    carrier.ws.send_text(twilio("start", {"t0k3n": token}))
    return carrier, await rig.app.next()


async def test_a_call_end_to_end(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        call_id, token = await rig.twilio_call(SID)
        carrier, app = await start_stream(rig, token)
        start = await app.json()
        assert start["type"] == "start"
        assert (start["call"]["id"], start["call"]["provider"]) == (call_id, "twilio")
        assert start["call"]["state"] == "active"
        assert start["audio"] == {
            "encoding": "mulaw",
            "sample_rate": 8000,
            "channels": 1,
            "frame_ms": 20,
        }

        # caller audio: Twilio's base64 JSON in, the raw 20 ms frame out to the app
        carrier.ws.send_text(twilio("media"))
        assert await app.binary() == CALLER_AUDIO

        # app audio: a binary frame in, Twilio's media message (bidirectional) out
        played = bytes(range(160))
        app.send_binary(played)
        assert await carrier.json() == {
            "event": "media",
            "streamSid": STREAM_SID,
            "media": {"payload": base64.b64encode(played).decode()},
        }

        # a mark round trip: the app asks, Twilio echoes it once the audio before it played
        app.send_json({"type": "mark", "name": "utt-7"})
        assert await carrier.json() == {
            "event": "mark",
            "streamSid": STREAM_SID,
            "mark": {"name": "utt-7"},
        }
        carrier.ws.send_text(twilio("mark"))
        assert await app.json() == {"type": "mark", "name": "utt-7"}

        # barge-in
        app.send_json({"type": "clear"})
        assert await carrier.json() == {"event": "clear", "streamSid": STREAM_SID}

        # DTMF reaches the app and the call's events
        carrier.ws.send_text(twilio("dtmf"))
        assert await app.json() == {"type": "dtmf", "digit": "1"}

        carrier.ws.send_text(twilio("stop"))
        assert await app.json() == STREAM_LOST
        closed, unread = await carrier.closed()
        assert (closed.code, closed.by_peer, unread) == (CloseCode.NORMAL, True, [])
        closed, unread = await app.closed()
        assert (closed.code, unread) == (CloseCode.NORMAL, [])

        events = [(e["type"], e.get("digit") or e.get("reason")) for e in await rig.events(call_id)]
        assert events[-5:] == [
            ("call.state", None),
            ("stream.started", None),
            ("call.dtmf", "1"),
            ("stream.stopped", "carrier stopped the stream"),
            ("call.ended", None),
        ]
        assert 'voicecalld_media_frames_total{direction="in"} 1' in await rig.metrics()
        assert 'voicecalld_media_frames_total{direction="out"} 1' in await rig.metrics()


async def test_the_outbound_track_is_not_the_callers_audio(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        _, token = await rig.twilio_call(SID)
        carrier, app = await start_stream(rig, token)
        await app.json()  # start
        carrier.ws.send_text(twilio("media", {'"inbound"': '"outbound"'}))
        carrier.ws.send_text(twilio("dtmf"))
        assert await app.json() == {"type": "dtmf", "digit": "1"}  # and no audio before it


async def test_messages_in_the_same_read_as_start_are_not_lost(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        _, token = await rig.twilio_call(SID)
        messages = [twilio("connected"), twilio("start", {"t0k3n": token}), twilio("media")]
        await rig.carrier_in_one_write("twilio", messages)
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        assert await app.binary() == CALLER_AUDIO


async def test_a_used_token_is_refused(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, token = await rig.twilio_call(SID)
        first, _ = await start_stream(rig, token)
        second = await rig.carrier("twilio")
        second.ws.send_text(twilio("start", {"t0k3n": token}))
        closed, _ = await second.closed()
        assert (closed.code, closed.reason) == (CloseCode.POLICY_VIOLATION, "invalid stream token")
        assert rig.app.nothing_pending()
        assert call_id in rig.daemon.manager.calls, "a refused stream does not touch the call"
        first.ws.send_text(twilio("media"))  # the first stream goes on


async def test_a_malformed_message_closes_the_stream_1008(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        _, token = await rig.twilio_call(SID)
        carrier, app = await start_stream(rig, token)
        await app.json()
        carrier.ws.send_text(orjson.dumps({"event": "media", "media": {"payload": "not base64!"}}))
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (
            CloseCode.POLICY_VIOLATION,
            "malformed carrier message",
        )
        assert await app.json() == STREAM_LOST
