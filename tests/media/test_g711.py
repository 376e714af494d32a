"""G.711 against reference tables written here from the ITU-T G.711 tables, and resampling
against a plain per-sample reference.

The references follow the standard's own description, not the module's bit tricks: the
decoder output of each segment ``s`` and step ``q`` (Tables 1a/2a), and the decision
values that bound each code's interval, searched by bisection. A 16-bit sample becomes the
standard's 14-bit (mu-law) or 13-bit (A-law) value as ITU-T G.191's reference code does:
the top bits, with negative samples taken by one's complement.
"""

from __future__ import annotations

import bisect
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.media.g711 import (
    alaw_to_pcm16,
    downsample_16k_to_8k,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
    upsample_8k_to_16k,
)


def ulaw_code(positive: bool, segment: int, step: int) -> int:
    """mu-law sends the polarity bit (1: positive) and the other seven bits inverted."""
    return (positive << 7) | (~((segment << 4) | step) & 0x7F)


def alaw_code(positive: bool, segment: int, step: int) -> int:
    """A-law sends the polarity bit (1: positive) and the bits with even ones inverted."""
    return ((positive << 7) | (segment << 4) | step) ^ 0x55


# Table 2a (mu-law): in 14-bit units, segment s has steps of 2^(s+1); step q of it decodes
# to 2^(s+1) (q + 16.5) - 33 and starts at the decision value 2^(s+1) (q + 16) - 33.
ULAW_OUTPUT = {
    ulaw_code(positive, s, q): (1 if positive else -1) * 4 * (2 ** (s + 1) * (2 * q + 33) // 2 - 33)
    for positive in (True, False)
    for s in range(8)
    for q in range(16)
}
ULAW_DECISIONS = sorted((2 ** (s + 1) * (q + 16) - 33, s, q) for s in range(8) for q in range(16))

# Table 1a (A-law): in 13-bit units, segments 0 and 1 have steps of 2, then each doubles;
# step q of segment 0 decodes to 2q + 1, of segment s > 0 to 2^s (q + 16.5).
ALAW_OUTPUT = {
    alaw_code(positive, s, q): (1 if positive else -1)
    * 8
    * (2 * q + 1 if s == 0 else 2 ** (s - 1) * (2 * q + 33))
    for positive in (True, False)
    for s in range(8)
    for q in range(16)
}
ALAW_DECISIONS = sorted(
    (2 * q if s == 0 else 2**s * (q + 16), s, q) for s in range(8) for q in range(16)
)

ALL_SAMPLES = list(range(-32768, 32768))
ALL_PCM = struct.pack("<65536h", *ALL_SAMPLES)


def reference_encode(
    sample: int, bits: int, decisions: list[tuple[int, int, int]]
) -> tuple[bool, int, int]:
    magnitude = ~sample if sample < 0 else sample
    value = magnitude >> (15 - bits)
    _, segment, step = decisions[bisect.bisect_right(decisions, (value, 99, 99)) - 1]
    return sample >= 0, segment, step


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def pcm(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def test_ulaw_decodes_every_code_to_its_table_value() -> None:
    assert samples(ulaw_to_pcm16(bytes(range(256)))) == [ULAW_OUTPUT[c] for c in range(256)]


def test_alaw_decodes_every_code_to_its_table_value() -> None:
    assert samples(alaw_to_pcm16(bytes(range(256)))) == [ALAW_OUTPUT[c] for c in range(256)]


def test_ulaw_encodes_every_sample_into_its_decision_interval() -> None:
    expected = bytes(ulaw_code(*reference_encode(x, 13, ULAW_DECISIONS)) for x in ALL_SAMPLES)
    assert pcm16_to_ulaw(ALL_PCM) == expected


def test_alaw_encodes_every_sample_into_its_decision_interval() -> None:
    expected = bytes(alaw_code(*reference_encode(x, 12, ALAW_DECISIONS)) for x in ALL_SAMPLES)
    assert pcm16_to_alaw(ALL_PCM) == expected


def test_every_code_survives_a_round_trip() -> None:
    codes = bytes(range(256))
    assert pcm16_to_alaw(alaw_to_pcm16(codes)) == codes
    # mu-law has two zeros; negative zero (0x7F) decodes to 0 and comes back positive
    assert pcm16_to_ulaw(ulaw_to_pcm16(codes)) == codes.replace(b"\x7f", b"\xff")


def test_known_values() -> None:
    assert ulaw_to_pcm16(b"\xff\x7f\x80\x00") == pcm([0, 0, 32124, -32124])
    assert alaw_to_pcm16(b"\xd5\x55\xaa\x2a") == pcm([8, -8, 32256, -32256])
    assert pcm16_to_ulaw(pcm([0, -1, 32767, -32768])) == b"\xff\x7f\x80\x00"
    assert pcm16_to_alaw(pcm([0, -1, 32767, -32768])) == b"\xd5\x55\xaa\x2a"


def test_a_frame_is_converted_whole() -> None:
    frame = bytes(range(160))
    assert len(ulaw_to_pcm16(frame)) == 320
    assert pcm16_to_ulaw(ulaw_to_pcm16(frame)) == frame.replace(b"\x7f", b"\xff")
    assert pcm16_to_ulaw(b"") == ulaw_to_pcm16(b"") == b""


@pytest.mark.parametrize(
    "convert", [pcm16_to_ulaw, pcm16_to_alaw, upsample_8k_to_16k, downsample_16k_to_8k]
)
def test_pcm_must_be_whole_samples(convert: object) -> None:
    with pytest.raises(ValueError, match="even number"):
        convert(b"\x00\x01\x02")  # type: ignore[operator]


# -- resampling ----------------------------------------------------------------------------

pcm_frames = st.lists(st.integers(-32768, 32767), max_size=400) | st.lists(
    st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767]), max_size=50
)


@given(values=pcm_frames)
def test_upsampling_interleaves_the_means_of_neighbours(values: list[int]) -> None:
    expected: list[int] = []
    for index, value in enumerate(values):
        following = values[index + 1] if index + 1 < len(values) else value
        expected += [value, (value + following) // 2]
    assert samples(upsample_8k_to_16k(pcm(values))) == expected


@given(values=pcm_frames)
def test_downsampling_keeps_the_mean_of_each_pair(values: list[int]) -> None:
    padded = values + values[-1:] if len(values) % 2 else values
    expected = [(padded[i] + padded[i + 1]) // 2 for i in range(0, len(padded), 2)]
    assert samples(downsample_16k_to_8k(pcm(values))) == expected


def test_resampling_keeps_a_steady_signal_and_the_frame_length() -> None:
    steady = pcm([-1234] * 160)
    assert upsample_8k_to_16k(steady) == pcm([-1234] * 320)
    assert downsample_16k_to_8k(upsample_8k_to_16k(steady)) == steady
    assert upsample_8k_to_16k(b"") == downsample_16k_to_8k(b"") == b""
