"""The application bridge (SPEC §8): encodings, barge-in, hang-up, failures, bounded queues.

The carrier side is the mock carrier, which speaks Twilio's stream protocol on ``/media/mock``;
its calls come in through its signed webhook, whose JSON answer carries the stream token.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
import trio

from tests.media.support import (
    NO_GRACE,
    STREAM_LOST,
    WAIT,
    BridgeApp,
    Peer,
    Rig,
    carrier_message,
    media_rig,
)
from tests.support import wait_until
from voicecalld.calls.model import EndReason
from voicecalld.media import g711
from voicecalld.media.connection import DEFAULT_MAX_BUFFER
from voicecalld.media.websocket import CloseCode, Codec, Role
from voicecalld.testing import free_port

SID = "CA11111111111111111111111111111111"
"""The mock call's carrier id: the one the documented Twilio ``start`` names."""
MULAW = bytes(code for code in range(256) if code != 0x7F)[-160:]
"""20 ms of μ-law without its negative zero (0x7F, which decodes like positive zero), so a
round trip through PCM gives back every byte."""


def media(audio: bytes) -> bytes:
    """Twilio's documented media message, carrying ``audio``."""
    message = orjson.loads(carrier_message("twilio", "media"))
    message["media"]["payload"] = base64.b64encode(audio).decode()
    return orjson.dumps(message)


def start(token: str) -> bytes:
    return carrier_message("twilio", "start", {"t0k3n": token})


async def call_with_stream(rig: Rig, app: BridgeApp | None = None) -> tuple[str, Peer, Peer]:
    """A mock call, its started stream and its bridge (start already read)."""
    call_id, token = await rig.mock_call(SID)
    carrier = await rig.carrier("mock")
    carrier.ws.send_text(start(token))
    bridge = await (app or rig.app).next()
    assert (await bridge.json())["type"] == "start"
    return call_id, carrier, bridge


async def playback(carrier: Peer) -> bytes:
    """The audio of the next message voicecalld sends the carrier (a media message)."""
    message = await carrier.json()
    assert message["event"] == "media", message
    return base64.b64decode(message["media"]["payload"])


PCM_8K = g711.ulaw_to_pcm16(MULAW)
PCM_16K = g711.upsample_8k_to_16k(PCM_8K)


@pytest.mark.parametrize(
    ("encoding", "heard", "said", "played"),
    [
        ("mulaw", MULAW, MULAW, MULAW),
        ("pcm16", PCM_8K, PCM_8K, MULAW),
        ("pcm16-16k", PCM_16K, PCM_16K, g711.pcm16_to_ulaw(g711.downsample_16k_to_8k(PCM_16K))),
    ],
)
async def test_the_bridge_speaks_its_encoding_both_ways(
    tmp_path: Path, encoding: str, heard: bytes, said: bytes, played: bytes
) -> None:
    """The app hears the caller in ``encoding``; what it says in ``encoding`` is played to the
    caller as the carrier's μ-law."""
    async with media_rig(tmp_path, media={"bridge_encoding": encoding}) as rig:
        _, carrier, bridge = await call_with_stream(rig)
        carrier.ws.send_text(media(MULAW))
        assert await bridge.binary() == heard
        bridge.send_binary(said)
        assert await playback(carrier) == played


async def test_app_commands_that_mean_nothing_are_ignored(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        _, carrier, bridge = await call_with_stream(rig)
        bridge.ws.send_text(b"not json")
        bridge.send_json({"type": "mark"})
        bridge.send_json({"type": "mark", "name": 7})
        bridge.send_json({"type": "mark", "name": "x" * 1000})
        bridge.send_json({"type": "dance"})
        bridge.ws.send_text(b"[1, 2]")
        bridge.send_json({"type": "mark", "name": "ok"})
        assert (await carrier.json())["mark"] == {"name": "ok"}


async def test_the_app_hangs_up(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await call_with_stream(rig)
        bridge.send_json({"type": "hangup"})
        assert await bridge.json() == {"type": "stop", "reason": "the application hung up"}
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.NORMAL, "the application hung up")
        call = await rig.daemon.manager.get(call_id)
        assert call.end_reason is EndReason.HANGUP_BOT


async def test_a_call_ended_elsewhere_closes_its_stream_and_bridge(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await call_with_stream(rig)
        response = await rig.daemon.api.post(f"{rig.base}/v1/calls/{call_id}/hangup")
        assert response.status_code == 200
        assert await bridge.json() == {"type": "stop", "reason": "call ended (hangup-bot)"}
        assert (await bridge.closed())[0].code == CloseCode.NORMAL
        assert (await carrier.closed())[0].code == CloseCode.NORMAL


@pytest.mark.parametrize("how", ["refused", "unreachable"])
async def test_a_bridge_that_cannot_connect_ends_the_call(tmp_path: Path, how: str) -> None:
    sections = {}
    if how == "unreachable":
        sections["media"] = {"bridge_url": f"ws://127.0.0.1:{free_port()}/bridge"}
    async with media_rig(tmp_path, **sections) as rig:
        rig.app.refusing = how == "refused"
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(start(token))
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.NORMAL, "bridge failed to connect")
        call = await rig.daemon.manager.get(call_id)
        assert call.end_reason is EndReason.ERROR
        assert rig.warned("bridge failed to connect; ending the call")


async def test_a_bridge_that_closes_ends_the_call(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await call_with_stream(rig)
        await bridge.ws.close(CloseCode.GOING_AWAY, "app restarting")
        closed, _ = await carrier.closed()
        assert (closed.code, closed.reason) == (CloseCode.NORMAL, "bridge closed")
        call = await rig.daemon.manager.get(call_id)
        assert call.end_reason is EndReason.ERROR
        assert rig.warned("bridge closed; ending the call")


async def test_audio_that_is_not_whole_samples_ends_the_call(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"bridge_encoding": "pcm16"}) as rig:
        call_id, carrier, bridge = await call_with_stream(rig)
        bridge.send_binary(b"\x00\x01\x02")
        closed, _ = await bridge.closed()
        assert closed.code == CloseCode.INVALID_DATA
        assert (await carrier.closed())[0].code == CloseCode.NORMAL
        assert (await rig.daemon.manager.get(call_id)).end_reason is EndReason.ERROR


async def test_a_call_placed_with_its_own_bridge_url_uses_it(tmp_path: Path) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig, trio.open_nursery() as nursery:
        own = await BridgeApp.serve(nursery)
        response = await rig.daemon.api.post(
            f"{rig.base}/v1/calls", json={"to": "+15551230000", "bridge_url": own.url}
        )
        assert response.status_code == 201, response.text
        call = response.json()
        token = rig.daemon.manager.issue_token(call["id"])  # what the answer would carry
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(
            carrier_message("twilio", "start", {"t0k3n": token, SID: call["provider_call_id"]})
        )
        bridge = await own.next()
        assert (await bridge.json())["call"]["id"] == call["id"]
        assert rig.app.nothing_pending()
        await carrier.ws.close()
        assert (await bridge.json())["type"] == "stop"
        await bridge.ws.close()
        nursery.cancel_scope.cancel()


async def test_without_a_bridge_the_stream_still_runs(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"bridge_url": ""}) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(start(token))
        carrier.ws.send_text(media(MULAW))
        carrier.ws.send_text(carrier_message("twilio", "dtmf"))
        carrier.ws.send_text(carrier_message("twilio", "stop"))
        assert (await carrier.closed())[0].code == CloseCode.NORMAL
        assert [e["type"] for e in await rig.events(call_id)][-3:] == [
            "stream.started",
            "call.dtmf",
            "stream.stopped",
        ]
        assert rig.app.paths == []
        assert 'voicecalld_media_frames_total{direction="in"} 1' in await rig.metrics()


async def test_a_carrier_that_vanishes_ends_the_call_and_the_app_hears_stop(
    tmp_path: Path,
) -> None:
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        _, token = await rig.mock_call(SID)
        stream = await rig.carrier_in_one_write("mock", [start(token)])
        bridge = await rig.app.next()
        await bridge.json()
        await stream.aclose()  # no close frame: the TCP connection just ends
        assert await bridge.json() == STREAM_LOST


SECOND = MULAW * 50
"""One second of μ-law in one frame (carriers do not promise 20 ms frames): fewer, bigger
frames fill the kernel's buffers in fewer steps."""


def frames_to_fill(frame_bytes: int) -> int:
    """Frames of ``frame_bytes`` that overflow whatever the kernel and voicecalld buffer for
    one socket: twice the largest send buffer TCP may grow to, plus the websocket's bound."""
    largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return 2 * (largest + DEFAULT_MAX_BUFFER) // frame_bytes + 1


async def test_a_slow_app_costs_audio_not_memory(tmp_path: Path) -> None:
    """An app that stops reading: voicecalld's buffer for it fills, then frames are dropped
    and counted, never queued without bound; every 20 ms frame of the caller's seconds is
    delivered or counted dropped."""
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        rig.app.shrink_receive_buffer(4096)
        _, carrier, bridge = await call_with_stream(rig)
        frame = media(SECOND)
        sent = frames_to_fill(len(SECOND))
        for _ in range(sent):
            carrier.ws.send_text(frame)
            await carrier.ws.wait_flushed()
        await wait_until(lambda: rig.counter("media_dropped", direction="in") > 0)
        carrier.ws.send_text(carrier_message("twilio", "stop"))
        _, messages = await bridge.closed()  # reads what waited, then the close
        delivered = [m.data for m in messages if not m.is_text]
        assert {len(audio) for audio in delivered} == {len(MULAW)}
        frames = sent * len(SECOND) // len(MULAW)
        assert 0 < len(delivered) < frames
        assert len(delivered) + rig.counter("media_dropped", direction="in") == frames
        assert rig.counter("media_frames", direction="in") == frames
        assert orjson.loads(messages[-1].data) == STREAM_LOST


async def test_a_slow_carrier_costs_audio_not_memory(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier_in_one_write("mock", [start(token)], receive_buffer=4096)
        bridge = await rig.app.next()
        await bridge.json()
        sent = frames_to_fill(len(media(SECOND)))
        for _ in range(sent):
            bridge.send_binary(SECOND)
            await bridge.ws.wait_flushed()
        await wait_until(lambda: rig.counter("media_dropped", direction="out") > 0)
        bridge.send_json({"type": "hangup"})
        codec, delivered, head = Codec(Role.CLIENT), 0, b""
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in head:
                head += await carrier.receive_some(65536)
            data = head.partition(b"\r\n\r\n")[2]
            while data:
                for message in codec.receive_data(data):
                    delivered += orjson.loads(message.data)["event"] == "media"
                await carrier.send_all(codec.data_to_send())  # our answer to the close
                data = await carrier.receive_some(65536)
        assert codec.close_code == CloseCode.NORMAL
        assert 0 < delivered < sent
        assert delivered + rig.counter("media_dropped", direction="out") == sent
        assert (await rig.daemon.manager.get(call_id)).end_reason is EndReason.HANGUP_BOT


async def test_a_stream_ended_with_its_call_still_records_its_end(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await call_with_stream(rig)
        bridge.send_json({"type": "hangup"})
        await carrier.closed()
        events = await rig.events(call_id, within=1.0)
        assert {"type": "stream.stopped", "reason": "the application hung up"}.items() <= next(
            e for e in events if e["type"] == "stream.stopped"
        ).items()
