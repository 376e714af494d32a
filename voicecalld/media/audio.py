"""Audio format conversion between a carrier's stream and the application bridge.

A format is ``(encoding, sample_rate)`` with encoding ``mulaw``, ``alaw`` or ``pcm16``
(16-bit little-endian). A :class:`Transcoder` is built once per stream and direction, so the
per-frame work is one call: nothing when the formats match (the common μ-law to μ-law bridge
passes the carrier's bytes through untouched), else decode, resample, encode with
:mod:`voicecalld.media.g711`'s tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from voicecalld.media import g711

__all__ = ["BRIDGE_FORMATS", "Format", "Transcoder"]

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


def _lookup(
    table: dict[K, Callable[[bytes], bytes]], key: K, what: str
) -> Callable[[bytes], bytes]:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unsupported {what}: {key!r}") from None
