"""What the simulated caller says: a generated tone or a speech file, cut into 20 ms frames.

The audio is held once as 8 kHz 16-bit little-endian PCM, a whole number of 20 ms frames; a
stream asks for it in its own format (μ-law, A-law, or L16 at 8 or 16 kHz) and gets every frame
encoded and base64'd once, up front (:meth:`Audio.payloads`), so sending a frame costs nothing
but building its message. Streams loop the audio for as long as they last. Pure, no I/O but
reading the file it is given.
"""

from __future__ import annotations

import base64
import math
import wave
from pathlib import Path
from typing import Final

from voicecalld.media import g711

__all__ = ["FRAME_SECONDS", "Audio"]

FRAME_SECONDS: Final = 0.02
SAMPLE_RATE: Final = 8000
_FRAME_BYTES: Final = int(SAMPLE_RATE * FRAME_SECONDS) * 2


class Audio:
    def __init__(self, pcm: bytes) -> None:
        """``pcm``: 8 kHz 16-bit little-endian mono; cut (or padded with silence) to whole
        frames. ``ValueError`` when there is not one frame of it."""
        if len(pcm) < _FRAME_BYTES:
            raise ValueError("the simulator needs at least 20 ms of audio")
        whole = len(pcm) - len(pcm) % _FRAME_BYTES
        self.pcm = pcm[:whole]
        self._payloads: dict[tuple[str, int], list[str]] = {}

    @classmethod
    def tone(cls, frequency: float = 440.0, seconds: float = 1.0, level: float = 0.25) -> Audio:
        """A sine tone at ``level`` of full scale (a whole number of periods per second)."""
        count = int(SAMPLE_RATE * seconds)
        peak = level * 32767
        samples = (
            round(peak * math.sin(2 * math.pi * frequency * n / SAMPLE_RATE)) for n in range(count)
        )
        return cls(b"".join(sample.to_bytes(2, "little", signed=True) for sample in samples))

    @classmethod
    def from_wav(cls, path: str | Path) -> Audio:
        """A speech file: WAV, 16-bit PCM, mono, 8 or 16 kHz (what telephony tools write)."""
        try:
            with wave.open(str(path), "rb") as file:
                channels, width, rate = (
                    file.getnchannels(),
                    file.getsampwidth(),
                    file.getframerate(),
                )
                data = file.readframes(file.getnframes())
        except (wave.Error, EOFError) as error:
            raise ValueError(f"{path}: not a PCM WAV file ({error})") from None
        if channels != 1 or width != 2 or rate not in (8000, 16000):
            raise ValueError(
                f"{path}: expected 16-bit mono PCM at 8 or 16 kHz, got {8 * width}-bit, "
                f"{channels} channel(s), {rate} Hz"
            )
        return cls(g711.downsample_16k_to_8k(data) if rate == 16000 else data)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def payloads(self, encoding: str, sample_rate: int = SAMPLE_RATE) -> list[str]:
        """Every 20 ms frame, base64, in ``encoding`` (``mulaw``, ``alaw``, ``pcm16``)."""
        key = (encoding, sample_rate)
        if key not in self._payloads:
            frames = [
                self.pcm[offset : offset + _FRAME_BYTES]
                for offset in range(0, len(self.pcm), _FRAME_BYTES)
            ]
            self._payloads[key] = [
                base64.b64encode(_encode(frame, encoding, sample_rate)).decode("ascii")
                for frame in frames
            ]
        return self._payloads[key]


def _encode(frame: bytes, encoding: str, sample_rate: int) -> bytes:
    if encoding == "mulaw" and sample_rate == SAMPLE_RATE:
        return g711.pcm16_to_ulaw(frame)
    if encoding == "alaw" and sample_rate == SAMPLE_RATE:
        return g711.pcm16_to_alaw(frame)
    if encoding == "pcm16" and sample_rate == SAMPLE_RATE:
        return frame
    if encoding == "pcm16" and sample_rate == 16000:
        return g711.upsample_8k_to_16k(frame)
    raise ValueError(f"the simulator cannot send {encoding} at {sample_rate} Hz")
