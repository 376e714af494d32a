"""Audio format conversion between a carrier's stream and the application bridge, and the
bridge's 20 ms frames.

A format is ``(encoding, sample_rate)`` with encoding ``mulaw``, ``alaw`` or ``pcm16``
(16-bit little-endian). A :class:`Transcoder` is built once per stream and direction, so the
per-frame work is one call: nothing when the formats match (the common μ-law to μ-law bridge
passes the carrier's bytes through untouched), else decode, resample, encode with
:mod:`voicecalld.media.g711`'s tables.

Carriers do not promise 20 ms chunks; the bridge does (SPEC §8, ``frame_ms``). A
:class:`Framer` cuts what comes into frames of exactly :func:`frame_bytes`, keeping what is
short of a frame for the next chunk, so no sample is lost or repeated on the way. It is the
slow path: a chunk that is already one whole frame, with nothing kept, is sent as it came
without going through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from voicecalld.media import g711

__all__ = ["BRIDGE_FORMATS", "Format", "Framer", "Transcoder", "frame_bytes"]

Format = tuple[str, int]
K = TypeVar("K")

BRIDGE_FORMATS: Final[dict[str, Format]] = {
    "mulaw": ("mulaw", 8000),
    "pcm16": ("pcm16", 8000),
    "pcm16-16k": ("pcm16", 16000),
}
"""``media.bridge_encoding`` values and the format each means."""

_DECODE: Final[dict[str, Callable[[bytes], bytes]]] = {
    "mulaw": g711.ulaw_to_pcm16,
    "alaw": g711.alaw_to_pcm16,
}
_ENCODE: Final[dict[str, Callable[[bytes], bytes]]] = {
    "mulaw": g711.pcm16_to_ulaw,
    "alaw": g711.pcm16_to_alaw,
}
_RESAMPLE: Final[dict[tuple[int, int], Callable[[bytes], bytes]]] = {
    (8000, 16000): g711.upsample_8k_to_16k,
    (16000, 8000): g711.downsample_16k_to_8k,
}


class Transcoder:
    """Converts audio from ``source`` to ``target`` format; ``ValueError`` if it cannot."""

    def __init__(self, source: Format, target: Format) -> None:
        steps: list[Callable[[bytes], bytes]] = []
        if source != target:
            (src_encoding, src_rate), (dst_encoding, dst_rate) = source, target
            if src_encoding != "pcm16":
                steps.append(_lookup(_DECODE, src_encoding, "encoding"))
            if src_rate != dst_rate:
                steps.append(_lookup(_RESAMPLE, (src_rate, dst_rate), "sample rate change"))
            if dst_encoding != "pcm16":
                steps.append(_lookup(_ENCODE, dst_encoding, "encoding"))
        self.steps = steps
        self.identity = not steps

    def __call__(self, audio: bytes) -> bytes:
        for step in self.steps:
            audio = step(audio)
        return audio


def frame_bytes(audio_format: Format, ms: int) -> int:
    """Bytes of ``ms`` milliseconds of ``audio_format``: 160 for 20 ms of G.711 at 8 kHz,
    320 for 16-bit PCM at 8 kHz, 640 at 16 kHz."""
    encoding, rate = audio_format
    return rate * ms // 1000 * (2 if encoding == "pcm16" else 1)


class Framer:
    """Cuts a stream of audio chunks into frames of exactly ``size`` bytes.

    :attr:`rest` holds what is short of a whole frame until the next chunk completes it (one
    bytearray for the framer's life, so a caller may keep it to see whether it is empty); what
    it holds when the stream ends is the caller's to drop (the bridge drops it: see
    :mod:`voicecalld.media.streams`).

    Example::

        framer = Framer(160)
        framer.cut(bytes(400))  # two frames of 160; 80 bytes kept
        framer.cut(bytes(80))   # one frame: the 80 kept and these 80
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"a frame must hold at least one byte, not {size}")
        self.size = size
        self.rest = bytearray()

    def cut(self, audio: bytes) -> list[bytes]:
        """The whole frames that what is kept and ``audio`` make, in order."""
        size, rest = self.size, self.rest
        if rest:
            audio = bytes(rest) + audio
            rest.clear()
        whole = len(audio) - len(audio) % size
        rest += memoryview(audio)[whole:]
        return [audio[i : i + size] for i in range(0, whole, size)]


def _lookup(
    table: dict[K, Callable[[bytes], bytes]], key: K, what: str
) -> Callable[[bytes], bytes]:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unsupported {what}: {key!r}") from None
