"""One bridge per call (SPEC §8), whatever its streams: a carrier may end a stream in the
middle of a call and open another (Twilio does, to play ``<Say>``), and the app keeps its one
connection: one ``start``, the caller's audio before and after, ``stop`` when the call ends.

Between two streams the app's audio is dropped (counted), its marks and clears are harmless,
and its hang-up, or its bridge closing, still ends the call. The grace is long in these tests
(``GRACE``): the next stream comes well within it; the grace running out is tested on the mock
clock, in test_streams_timers.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Final

import orjson

from tests.media.support import Peer, Rig, carrier_message, media_rig
from tests.support import wait_until
from voicecalld.calls.model import EndReason
from voicecalld.media import g711
from voicecalld.media.websocket import CloseCode

GRACE: Final = {"stream_grace": 60.0}
TWILIO_SID = "CA11111111111111111111111111111111"
"""The ``callSid`` of Twilio's documented ``start``."""
FIRST_STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
"""The ``streamSid`` of Twilio's documented messages."""
SECOND_STREAM = "MZ22222222222222222222222222222222"
CALLER = b"\x7e" * 160
"""What Twilio's documented ``media`` message carries."""
PLIVO_UUID = "12345678-1234-1234-1234-123456789abc"
"""The ``callId`` of Plivo's documented ``start``."""


def twilio(name: str, stream_sid: str, changes: dict[str, str] | None = None) -> bytes:
    """Twilio's documented message ``name``, of the stream ``stream_sid``."""
    return carrier_message("twilio", name, {FIRST_STREAM: stream_sid, **(changes or {})})


async def twilio_stream(rig: Rig, token: str, stream_sid: str) -> Peer:
    carrier = await rig.carrier("twilio")
    carrier.ws.send_text(carrier_message("twilio", "connected"))
    carrier.ws.send_text(twilio("start", stream_sid, {"t0k3n": token}))
    return carrier


async def bridged_call(rig: Rig) -> tuple[str, Peer, Peer]:
    """A Twilio call, its first stream and its bridge (``start`` read)."""
    call_id, token = await rig.twilio_call(TWILIO_SID)
    carrier = await twilio_stream(rig, token, FIRST_STREAM)
    bridge = await rig.app.next()
    assert (await bridge.json())["type"] == "start"
    return call_id, carrier, bridge


async def stream_gone(carrier: Peer) -> None:
    """Twilio ends the stream (to play a ``<Say>``): ``stop``, and voicecalld closes it."""
    carrier.ws.send_text(twilio("stop", FIRST_STREAM))
    closed, _ = await carrier.closed()
    assert closed.code == CloseCode.NORMAL


def played(message: dict[str, object], stream_sid: str) -> bytes:
    """The audio of a Twilio ``media`` message voicecalld sent to the stream ``stream_sid``."""
    assert (message["event"], message["streamSid"]) == ("media", stream_sid), message
    media = message["media"]
    assert isinstance(media, dict)
    return base64.b64decode(media["payload"])


async def test_a_stream_superseded_mid_call_keeps_the_one_bridge(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=GRACE) as rig:
        call_id, first, bridge = await bridged_call(rig)
        first.ws.send_text(twilio("media", FIRST_STREAM))
        assert await bridge.binary() == CALLER
        bridge.send_binary(b"\x01" * 160)
        assert played(await first.json(), FIRST_STREAM) == b"\x01" * 160

        await stream_gone(first)
        # no carrier to play to: the app's audio is dropped and counted, its marks and
        # clears are harmless, and the app hears nothing
        dropped = rig.counter("media_dropped", direction="out")
        bridge.send_binary(b"\x02" * 160)
        bridge.send_json({"type": "mark", "name": "utt-1"})
        bridge.send_json({"type": "clear"})
        await wait_until(lambda: rig.counter("media_dropped", direction="out") == dropped + 1)

        # the stream of the TwiML after the <Say>, with a fresh token
        second = await twilio_stream(rig, rig.daemon.manager.issue_token(call_id), SECOND_STREAM)
        second.ws.send_text(twilio("media", SECOND_STREAM))
        assert await bridge.binary() == CALLER
        bridge.send_binary(b"\x03" * 160)
        assert played(await second.json(), SECOND_STREAM) == b"\x03" * 160
        bridge.send_json({"type": "mark", "name": "utt-2"})
        assert (await second.json())["mark"] == {"name": "utt-2"}
        assert rig.app.nothing_pending()
        assert len(rig.app.paths) == 1, "one bridge connection for the call"

        response = await rig.daemon.api.post(f"{rig.base}/v1/calls/{call_id}/hangup")
        assert response.status_code == 200
        assert await bridge.json() == {"type": "stop", "reason": "call ended (hangup-bot)"}
        closed, unread = await bridge.closed()
        assert (closed.code, closed.by_peer, unread) == (CloseCode.NORMAL, True, [])
        assert (await second.closed())[0].code == CloseCode.NORMAL


async def test_the_app_hanging_up_between_streams_ends_the_call(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=GRACE) as rig:
        call_id, carrier, bridge = await bridged_call(rig)
        await stream_gone(carrier)
        bridge.send_json({"type": "hangup"})
        assert await bridge.json() == {"type": "stop", "reason": "the application hung up"}
        assert (await bridge.closed())[0].code == CloseCode.NORMAL
        await wait_until(lambda: call_id not in rig.daemon.manager.calls)
        assert (await rig.daemon.manager.get(call_id)).end_reason is EndReason.HANGUP_BOT


async def test_a_bridge_closing_between_streams_ends_the_call(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=GRACE) as rig:
        call_id, carrier, bridge = await bridged_call(rig)
        await stream_gone(carrier)
        await bridge.ws.close(CloseCode.GOING_AWAY, "app restarting")
        await wait_until(lambda: call_id not in rig.daemon.manager.calls)
        assert (await rig.daemon.manager.get(call_id)).end_reason is EndReason.ERROR
        assert rig.warned("bridge closed; ending the call")


async def test_a_next_stream_in_another_format_is_converted_for_the_same_bridge(
    tmp_path: Path,
) -> None:
    """The bridge's format is set by its ``start``, once; each stream gets transcoders of its
    own: Plivo μ-law 8 kHz first, then L16 16 kHz, to one ``pcm16-16k`` bridge."""
    async with media_rig(tmp_path, calls=GRACE, media={"bridge_encoding": "pcm16-16k"}) as rig:
        call_id, token = await rig.plivo_call(PLIVO_UUID)
        first = await rig.carrier("plivo")
        first.ws.send_text(carrier_message("plivo", "start", {"t0k3n": token}))
        bridge = await rig.app.next()
        assert (await bridge.json())["audio"]["sample_rate"] == 16000
        first.ws.send_text(carrier_message("plivo", "media"))
        mulaw = b"\x7e" * 160
        assert await bridge.binary() == g711.upsample_8k_to_16k(g711.ulaw_to_pcm16(mulaw))
        await first.ws.close()  # Plivo ends a stream so
        await first.closed()

        second = await rig.carrier("plivo")
        l16 = {'"audio/x-mulaw","sampleRate":8000': '"audio/x-l16","sampleRate":16000'}
        token = rig.daemon.manager.issue_token(call_id)
        second.ws.send_text(carrier_message("plivo", "start", {"t0k3n": token, **l16}))
        pcm = bytes(range(256)) * 2 + bytes(128)  # 20 ms at 16 kHz, 16-bit
        media = orjson.loads(carrier_message("plivo", "media"))
        media["media"]["payload"] = base64.b64encode(pcm).decode()
        second.ws.send_text(orjson.dumps(media))
        assert await bridge.binary() == pcm
        bridge.send_binary(pcm)
        playing = (await second.json())["media"]
        assert playing["contentType"] == "audio/x-mulaw"
        expected = g711.pcm16_to_ulaw(g711.downsample_16k_to_8k(pcm))
        assert base64.b64decode(playing["payload"]) == expected
        assert rig.app.nothing_pending()
