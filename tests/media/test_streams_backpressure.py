"""A side that reads slowly loses audio, never what it must hear (SPEC §8, issue 7).

Audio to a slow side is dropped once voicecalld's outgoing buffer for it is full; a mark, a
clear, a digit or ``stop`` is not: it goes behind the audio that waits. And a ``clear`` from
the app drops the audio still waiting for the carrier (a barge-in) before telling it.

Each test stalls one side (a receive buffer of 4 KiB that nobody reads), floods it until
voicecalld drops audio, and only then sends what must get through: at that point the buffer
is full to within one audio frame, so anything bigger than the room left (the long mark
names below) would be dropped if it were treated like audio. The stalled side reads only
once the stream is over (its end recorded), so that nothing it reads makes room meanwhile.
The carrier side is the mock carrier, which speaks Twilio's stream protocol on
``/media/mock``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Final

import orjson
import trio
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.media.support import NO_GRACE, STREAM_LOST, WAIT, Peer, Rig, carrier_message, media_rig
from voicecalld.calls.model import EndReason
from voicecalld.media.connection import DEFAULT_MAX_BUFFER
from voicecalld.media.websocket import CloseCode

SID = "CA11111111111111111111111111111111"
"""The mock call's carrier id: the one the documented Twilio ``start`` names."""
FRAME = bytes(range(1, 161))
"""20 ms of μ-law."""
DROPS: Final = 20
"""Drops to wait for: once audio is dropped, the buffer has less room than one frame."""
BATCH: Final = 100
"""Frames sent between two looks at the drop counter."""
LONG_NAME: Final = "m" * 200
"""A mark name that makes a message bigger than any audio frame these tests send."""


def media(audio: bytes) -> bytes:
    """Twilio's documented media message, carrying ``audio``."""
    message = orjson.loads(carrier_message("twilio", "media"))
    message["media"]["payload"] = base64.b64encode(audio).decode()
    return orjson.dumps(message)


def dtmf(digit: str) -> bytes:
    return carrier_message("twilio", "dtmf", {'"digit":"1"': f'"digit":"{digit}"'})


async def carrier_call(rig: Rig, *, receive_buffer: int = 0) -> tuple[str, trio.SocketStream, Peer]:
    """A mock call, its stream from a raw carrier socket (with that receive buffer, 0 for the
    kernel's), and its bridge (``start`` read)."""
    call_id, token = await rig.mock_call(SID)
    start = carrier_message("twilio", "start", {"t0k3n": token})
    carrier = await rig.carrier_in_one_write("mock", [start], receive_buffer=receive_buffer)
    bridge = await rig.app.next()
    assert (await bridge.json())["type"] == "start"
    return call_id, carrier, bridge


async def slow_carrier_call(rig: Rig) -> tuple[str, trio.SocketStream, Peer]:
    """:func:`carrier_call` with a 4 KiB receive buffer: the carrier falls behind at once."""
    return await carrier_call(rig, receive_buffer=4096)


def barge_in(bridge: Peer) -> None:
    """Audio, a mark, audio, ``clear``, audio, ``hangup``: sent between two awaits, so the
    harness writes them in one write (voicecalld reads them as one batch)."""
    bridge.send_binary(b"\x01" * 160)
    bridge.send_json({"type": "mark", "name": "before"})
    bridge.send_binary(b"\x02" * 160)
    bridge.send_json({"type": "clear"})
    bridge.send_binary(b"\x03" * 160)
    bridge.send_json({"type": "hangup"})


async def flood(
    rig: Rig, direction: str, send: Callable[[], bool], flushed: Callable[[], Awaitable[None]]
) -> int:
    """Call ``send`` (one audio frame) until voicecalld has dropped ``DROPS`` more frames
    going ``direction``; return how many were sent. ``flushed`` waits until the frames sent
    have gone to the kernel."""
    goal = rig.counter("media_dropped", direction=direction) + DROPS
    sent = 0
    with trio.fail_after(4 * WAIT):
        while rig.counter("media_dropped", direction=direction) < goal:
            for _ in range(BATCH):
                assert send()
            sent += BATCH
            await flushed()
            await trio.sleep(0.001)  # voicecalld reads them meanwhile
    return sent


async def read_to_the_close(carrier: trio.SocketStream) -> list[bytes]:
    """The text messages voicecalld sent a raw carrier socket after the 101, in order, read
    to the closing handshake (answered) by wsproto: an oracle independent of voicecalld's own
    codec, which would notice a frame cut short."""
    frames, received, messages, text = FrameProtocol(client=True, extensions=[]), b"", [], ""
    close_code = None
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in received:
            received += await carrier.receive_some(65536)
        data = received.partition(b"\r\n\r\n")[2]
        while data:
            frames.receive_bytes(data)
            for frame in frames.received_frames():
                if frame.opcode is Opcode.CLOSE:
                    assert isinstance(frame.payload, tuple)
                    close_code = frame.payload[0]
                    await carrier.send_all(frames.close(close_code))
                else:
                    assert frame.opcode in (Opcode.TEXT, Opcode.CONTINUATION)
                    assert isinstance(frame.payload, str)
                    text += frame.payload
                    if frame.message_finished:
                        messages.append(text.encode())
                        text = ""
            data = await carrier.receive_some(65536)
    assert close_code == CloseCode.NORMAL
    return messages


def played(message: bytes) -> tuple[str, bytes | str]:
    """A message to the carrier, short: ("media", audio), ("mark", name) or ("clear", "")."""
    decoded = orjson.loads(message)
    if decoded["event"] == "media":
        return "media", base64.b64decode(decoded["media"]["payload"])
    if decoded["event"] == "mark":
        return "mark", decoded["mark"]["name"]
    return decoded["event"], ""


async def test_a_slow_carrier_still_gets_marks_and_clears(tmp_path: Path) -> None:
    """The app floods a carrier that does not read with one-sample frames (the smallest
    media messages, so the buffer fills to the brim), then marks and clears, twice: every
    mark and clear arrives, in its place; the audio queued before each clear is dropped."""
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await slow_carrier_call(rig)
        sent = 0
        for n in (1, 2):
            sent += await flood(
                rig, "out", partial(bridge.ws.send_binary, bytes([n])), bridge.ws.wait_flushed
            )
            bridge.send_json({"type": "mark", "name": f"{n}{LONG_NAME}"})
            bridge.send_json({"type": "clear"})
        bridge.send_binary(FRAME)
        bridge.send_json({"type": "hangup"})
        await rig.events(call_id)
        messages = [played(message) for message in await read_to_the_close(carrier)]

        runs = [kind for kind, _ in groupby(messages)]  # ("media", b"\x01") once per run
        before = [("media", b"\x01"), ("mark", f"1{LONG_NAME}"), ("clear", "")]
        after = [("mark", f"2{LONG_NAME}"), ("clear", ""), ("media", FRAME)]
        # the second flood may have been dropped whole by the second clear
        assert runs in (before + after, [*before, ("media", b"\x02"), *after])
        delivered = sum(1 for kind, audio in messages if kind == "media" and audio != FRAME)
        dropped = rig.counter("media_dropped", direction="out")
        discarded = sent - delivered - dropped
        assert discarded > DEFAULT_MAX_BUFFER // len(media(b"\x01")) // 2
        assert rig.counter("media_frames", direction="out") == sent + 1
        assert (await rig.daemon.manager.get(call_id)).end_reason is EndReason.HANGUP_BOT


async def test_a_slow_app_still_gets_digits_marks_and_stop(tmp_path: Path) -> None:
    """The carrier floods an app that does not read, then sends digits, a mark and ``stop``:
    the app gets all of them after the audio that waited, ``stop`` last. (The digits alone,
    29 bytes each, would leave no room for a ``stop`` treated like audio.)"""
    async with media_rig(tmp_path, calls=NO_GRACE) as rig:
        rig.app.shrink_receive_buffer(4096)
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(carrier_message("twilio", "start", {"t0k3n": token}))
        bridge = await rig.app.next()
        assert (await bridge.json())["type"] == "start"
        sent = await flood(
            rig, "in", partial(carrier.ws.send_text, media(FRAME)), carrier.ws.wait_flushed
        )
        for digit in "123456":
            carrier.ws.send_text(dtmf(digit))
        carrier.ws.send_text(carrier_message("twilio", "mark", {"utt-7": LONG_NAME}))
        carrier.ws.send_text(carrier_message("twilio", "stop"))
        await rig.events(call_id)

        _, messages = await bridge.closed()  # reads what waited, then the close
        texts = [orjson.loads(m.data) for m in messages if m.is_text]
        assert texts == [
            *({"type": "dtmf", "digit": digit} for digit in "123456"),
            {"type": "mark", "name": LONG_NAME},
            STREAM_LOST,
        ]
        first_text = next(index for index, m in enumerate(messages) if m.is_text)
        audio = messages[:first_text]
        assert all(m.data == FRAME for m in audio)
        assert len(audio) + rig.counter("media_dropped", direction="in") == sent


async def test_clear_drops_the_audio_queued_before_it(tmp_path: Path) -> None:
    """A barge-in: of what the app said before its ``clear``, the carrier gets only what had
    left voicecalld already (the kernel's), and the mark said among it; what it says after
    follows the carrier's ``clear``. The audio still waiting when the clear came (in
    voicecalld's buffer for the carrier, or read with the clear) is dropped."""
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await slow_carrier_call(rig)
        said = await flood(
            rig, "out", partial(bridge.ws.send_binary, FRAME), bridge.ws.wait_flushed
        )
        barge_in(bridge)
        await rig.events(call_id)
        messages = [played(message) for message in await read_to_the_close(carrier)]

        clear = messages.index(("clear", ""))
        assert set(messages[: clear - 1]) == {("media", FRAME)}
        assert messages[clear - 1 :] == [
            ("mark", "before"),
            ("clear", ""),
            ("media", b"\x03" * 160),
        ]
        dropped = rig.counter("media_dropped", direction="out")
        discarded = said - (clear - 1) - dropped
        assert discarded > DEFAULT_MAX_BUFFER // len(media(FRAME)) // 2


async def test_audio_read_with_a_clear_never_reaches_the_carrier(tmp_path: Path) -> None:
    """What the app said before a ``clear`` and voicecalld read with it (one write, one batch)
    is dropped before it is sent, though the carrier reads at once: it would only be cleared
    there. The mark said among it still goes, in its place."""
    async with media_rig(tmp_path) as rig:
        call_id, carrier, bridge = await carrier_call(rig)
        barge_in(bridge)
        await rig.events(call_id)
        messages = [played(message) for message in await read_to_the_close(carrier)]
        assert messages == [("mark", "before"), ("clear", ""), ("media", b"\x03" * 160)]
