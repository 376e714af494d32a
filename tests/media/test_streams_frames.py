"""The app hears the caller in 20 ms frames, whatever the size of the carrier's chunks (SPEC §8:
``start`` promises ``"frame_ms": 20``).

Carriers do not promise 20 ms chunks. Whatever they send is cut into frames of exactly 20 ms
of the bridge's encoding, in order, nothing lost or repeated; less than a frame left when the
stream ends is dropped. The carrier side is the mock carrier, which speaks Twilio's stream
protocol on ``/media/mock``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.media.support import NO_GRACE, STREAM_LOST, carrier_message, media_rig
from voicecalld.media import g711

SID = "CA11111111111111111111111111111111"
CONVERT: dict[str, Callable[[bytes], bytes]] = {
    "mulaw": lambda audio: audio,
    "pcm16": g711.ulaw_to_pcm16,
    "pcm16-16k": lambda audio: g711.upsample_8k_to_16k(g711.ulaw_to_pcm16(audio)),
}
"""What the app hears of a chunk of the caller's μ-law, in each bridge encoding."""
FRAME_BYTES = {"mulaw": 160, "pcm16": 320, "pcm16-16k": 640}


def media(audio: bytes) -> bytes:
    """Twilio's documented media message, carrying ``audio``."""
    message = orjson.loads(carrier_message("twilio", "media"))
    message["media"]["payload"] = base64.b64encode(audio).decode()
    return orjson.dumps(message)


@pytest.mark.parametrize(
    ("encoding", "sizes"),
    [
        ("mulaw", [240, 240, 240]),  # 30 ms chunks: 90 ms, 4 frames and 10 ms dropped at the end
        ("mulaw", [8000]),  # one second in one chunk: 50 frames
        ("mulaw", [160, 240, 80, 160, 8000, 100]),  # a whole frame while a part is kept
        ("pcm16", [240, 240, 240]),
        ("pcm16-16k", [160, 240, 80, 160, 8000, 100]),
    ],
    ids=["30 ms", "1 s", "mixed", "30 ms to pcm16", "mixed to pcm16-16k"],
)
async def test_the_app_hears_20_ms_frames_whatever_the_carrier_sends(
    tmp_path: Path, encoding: str, sizes: list[int]
) -> None:
    said = bytes(n % 251 for n in range(sum(sizes)))
    chunks, start = [], 0
    for size in sizes:
        chunks.append(said[start : start + size])
        start += size
    heard = b"".join(CONVERT[encoding](chunk) for chunk in chunks)
    size = FRAME_BYTES[encoding]
    frames = len(heard) // size
    async with media_rig(tmp_path, media={"bridge_encoding": encoding}, calls=NO_GRACE) as rig:
        call_id, token = await rig.mock_call(SID)
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(carrier_message("twilio", "start", {"t0k3n": token}))
        bridge = await rig.app.next()
        assert (await bridge.json())["audio"]["frame_ms"] == 20
        for chunk in chunks:
            carrier.ws.send_text(media(chunk))
        received = [await bridge.binary() for _ in range(frames)]
        carrier.ws.send_text(carrier_message("twilio", "stop"))
        _, rest = await bridge.closed()

        assert {len(frame) for frame in received} == {size}
        assert b"".join(received) == heard[: frames * size]
        assert [orjson.loads(m.data) for m in rest] == [
            STREAM_LOST
        ]  # what was short of a frame was dropped
        await rig.events(call_id)
        assert rig.counter("media_frames", direction="in") == frames
