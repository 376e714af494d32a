"""Plivo audio streams on ``/media/plivo``, end to end, with Plivo's documented messages.

The call comes in through an answer webhook signed with Plivo's SDK (V3); the token is the one
of the answer's ``<Stream extraHeaders>``, which Plivo echoes as ``extra_headers`` on ``start``.
Plivo documents no ``stop``: a stream ends when its socket closes.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tests.media.support import NO_GRACE, STREAM_LOST, Peer, Rig, carrier_message, media_rig
from voicecalld.media import g711
from voicecalld.media.websocket import CloseCode

CALL_UUID = "12345678-1234-1234-1234-123456789abc"
"""The ``callId`` of the documented ``start``: the call's webhooks use it as ``CallUUID``."""
STREAM_ID = "87654321-4321-4321-4321-cba987654321"


def plivo(name: str, changes: dict[str, str] | None = None) -> bytes:
    return carrier_message("plivo", name, changes)


async def start_stream(rig: Rig, token: str, changes: dict[str, str] | None = None) -> Peer:
    carrier = await rig.carrier("plivo")
    carrier.ws.send_text(plivo("start", {"t0k3n": token, **(changes or {})}))
    return carrier


async def test_a_call_end_to_end(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        call_id, token = await rig.plivo_call(CALL_UUID)
        carrier = await start_stream(rig, token)
        app = await rig.app.next()
        start = await app.json()
        assert (start["call"]["id"], start["call"]["provider"]) == (call_id, "plivo")
        assert start["audio"]["encoding"] == "mulaw"

        carrier.ws.send_text(plivo("media"))
        assert await app.binary() == b"\x7e" * 160

        app.send_binary(b"\x01" * 160)
        assert await carrier.json() == {
            "event": "playAudio",
            "media": {
                "contentType": "audio/x-mulaw",
                "sampleRate": 8000,
                "payload": base64.b64encode(b"\x01" * 160).decode(),
            },
        }

        # mark round trip: checkpoint out, playedStream (or, per a support article, played) back
        app.send_json({"type": "mark", "name": "customer greeting audio"})
        assert await carrier.json() == {
            "event": "checkpoint",
            "streamId": STREAM_ID,
            "name": "customer greeting audio",
        }
        carrier.ws.send_text(plivo("playedStream"))
        assert await app.json() == {"type": "mark", "name": "customer greeting audio"}
        carrier.ws.send_text(plivo("played"))
        assert await app.json() == {"type": "mark", "name": "customer greeting audio"}

        app.send_json({"type": "clear"})
        assert await carrier.json() == {"event": "clearAudio", "streamId": STREAM_ID}
        carrier.ws.send_text(plivo("clearedAudio"))  # Plivo's answer: nothing for the app

        carrier.ws.send_text(plivo("dtmf"))
        assert await app.json() == {"type": "dtmf", "digit": "5"}

        # no stop is documented: the close ends the stream, and the app hears stop
        await carrier.ws.close()
        assert await app.json() == STREAM_LOST
        closed, _ = await app.closed()
        assert closed.code == CloseCode.NORMAL
        assert [e["type"] for e in await rig.events(call_id)][-3:] == [
            "call.dtmf",
            "stream.stopped",
            "call.ended",
        ]


async def test_l16_at_16khz_with_a_pcm16_16k_bridge(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"bridge_encoding": "pcm16-16k"}) as rig:
        _, token = await rig.plivo_call(CALL_UUID)
        format_16k = {'"audio/x-mulaw","sampleRate":8000': '"audio/x-l16","sampleRate":16000'}
        carrier = await start_stream(rig, token, format_16k)
        app = await rig.app.next()
        assert (await app.json())["audio"] == {
            "encoding": "pcm16",
            "sample_rate": 16000,
            "channels": 1,
            "frame_ms": 20,
        }
        pcm = bytes(range(256)) * 2 + bytes(128)  # 20 ms at 16 kHz, 16-bit
        payload = base64.b64encode(pcm).decode()
        carrier.ws.send_text(plivo("media", {plivo_payload(): payload}))
        assert await app.binary() == pcm
        # playAudio says mu-law 8 kHz (what voicecalld's <Stream> asks for): the app's audio
        # is converted to that, not to the L16 the stream carries
        app.send_binary(pcm)
        played = await carrier.json()
        assert played["media"]["contentType"] == "audio/x-mulaw"
        mulaw = g711.pcm16_to_ulaw(g711.downsample_16k_to_8k(pcm))
        assert base64.b64decode(played["media"]["payload"]) == mulaw


async def test_a_token_of_another_carriers_call_is_refused(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, token = await rig.mock_call()
        carrier = await start_stream(rig, token)
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.POLICY_VIOLATION, "invalid stream token")
        assert call_id in rig.daemon.manager.calls
        assert rig.app.nothing_pending()


async def test_a_token_for_another_call_uuid_is_refused(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        _, token = await rig.plivo_call(CALL_UUID)
        carrier = await start_stream(
            rig, token, {CALL_UUID: "99999999-1234-1234-1234-123456789abc"}
        )
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.POLICY_VIOLATION, "invalid stream token")


def plivo_payload() -> str:
    media = plivo("media").decode()
    return media.split('"payload":"')[1].split('"')[0]


async def test_a_stop_frame_ends_the_stream_too(tmp_path: Path) -> None:
    """Plivo documents none, but one is read if it comes."""
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        _, token = await rig.plivo_call(CALL_UUID)
        carrier = await start_stream(rig, token)
        app = await rig.app.next()
        await app.json()
        carrier.send_json({"event": "stop", "streamId": STREAM_ID})
        assert await app.json() == STREAM_LOST
        assert (await carrier.closed())[0].code == CloseCode.NORMAL
