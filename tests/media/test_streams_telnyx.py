"""Telnyx media streaming on ``/media/telnyx``, end to end, with Telnyx's documented messages.

The call comes in as a ``call.initiated`` webhook signed Ed25519; Telnyx ignores webhook
answers, so voicecalld answers it through REST (the simulator) with the stream, and the token
travels in that command's ``client_state``, which Telnyx echoes on ``start``.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tests.media.support import NO_GRACE, STREAM_LOST, Peer, Rig, carrier_message, media_rig
from voicecalld.carriers.telnyx.wire import encode_client_state
from voicecalld.media import g711
from voicecalld.media.websocket import CloseCode

CALL_CONTROL_ID = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
"""The ``call_control_id`` of the documented ``start``: the call's webhooks use it too."""
SAMPLE_CLIENT_STATE = "aGF2ZSBhIG5pY2UgZGF5ID1d"


def telnyx(name: str, changes: dict[str, str] | None = None) -> bytes:
    return carrier_message("telnyx", name, changes)


async def start_stream(rig: Rig, call_id: str, token: str, codec: str = "PCMU") -> Peer:
    """Telnyx's stream as ``answer`` starts it: the token only in the echoed client_state."""
    carrier = await rig.carrier("telnyx")
    carrier.ws.send_text(telnyx("connected"))
    start = telnyx(
        "start",
        {
            SAMPLE_CLIENT_STATE: encode_client_state(call_id, token),
            ',"token":"t0k3n"': "",
            '"PCMU"': f'"{codec}"',
        },
    )
    carrier.ws.send_text(start)
    return carrier


async def test_a_call_end_to_end(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        call_id, token = await rig.telnyx_call(CALL_CONTROL_ID)
        carrier = await start_stream(rig, call_id, token)
        app = await rig.app.next()
        start = await app.json()
        assert (start["call"]["id"], start["call"]["provider"]) == (call_id, "telnyx")

        carrier.ws.send_text(telnyx("media"))
        assert await app.binary() == b"\x7e" * 160
        carrier.ws.send_text(telnyx("error"))  # Telnyx reports an error: nothing to forward

        app.send_binary(b"\x02" * 160)
        assert await carrier.json() == {
            "event": "media",
            "media": {"payload": base64.b64encode(b"\x02" * 160).decode()},
        }
        app.send_json({"type": "mark", "name": "utt-7"})
        assert await carrier.json() == {"event": "mark", "mark": {"name": "utt-7"}}
        carrier.ws.send_text(telnyx("mark"))
        assert await app.json() == {"type": "mark", "name": "utt-7"}
        app.send_json({"type": "clear"})
        assert await carrier.json() == {"event": "clear"}
        carrier.ws.send_text(telnyx("dtmf"))
        assert await app.json() == {"type": "dtmf", "digit": "1"}

        carrier.ws.send_text(telnyx("stop"))
        assert await app.json() == STREAM_LOST
        closed, _ = await carrier.closed()
        assert closed.code == CloseCode.NORMAL


async def test_a_pcma_stream_is_bridged_as_mulaw_both_ways(tmp_path: Path) -> None:
    """The app hears the configured encoding whatever the carrier streams, and what it sends
    is played as voicecalld asked Telnyx to take it (``stream_bidirectional_codec=PCMU``)."""
    async with media_rig(tmp_path) as rig:
        call_id, token = await rig.telnyx_call(CALL_CONTROL_ID)
        carrier = await start_stream(rig, call_id, token, codec="PCMA")
        app = await rig.app.next()
        assert (await app.json())["audio"]["encoding"] == "mulaw"
        alaw = bytes(range(160))
        carrier.ws.send_text(telnyx("media", {telnyx_payload(): base64.b64encode(alaw).decode()}))
        assert await app.binary() == g711.pcm16_to_ulaw(g711.alaw_to_pcm16(alaw))
        app.send_binary(b"\x03" * 160)
        assert await carrier.json() == {
            "event": "media",
            "media": {"payload": base64.b64encode(b"\x03" * 160).decode()},
        }


async def test_the_token_in_custom_parameters_is_read_too(tmp_path: Path) -> None:
    """``streaming_start`` (a stream re-opened on a live call) carries it there."""
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        _, token = await rig.telnyx_call(CALL_CONTROL_ID)
        carrier = await rig.carrier("telnyx")
        carrier.ws.send_text(telnyx("start", {"t0k3n": token}))
        app = await rig.app.next()
        assert (await app.json())["type"] == "start"
        carrier.ws.send_text(telnyx("stop"))
        assert await app.json() == STREAM_LOST


async def test_a_start_without_a_token_is_refused(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        await rig.telnyx_call(CALL_CONTROL_ID)
        carrier = await rig.carrier("telnyx")
        carrier.ws.send_text(telnyx("start", {',"token":"t0k3n"': ""}))
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.POLICY_VIOLATION, "malformed message")


def telnyx_payload() -> str:
    return telnyx("media").decode().split('"payload":"')[1].split('"')[0]
