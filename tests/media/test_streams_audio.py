"""The bridge's audio conversions (:mod:`voicecalld.media.audio`), pure: no event loop, no socket.

:mod:`voicecalld.media.g711` is checked against the ITU tables in ``test_g711.py``; here, that
each pair of formats runs the steps it needs, in order, and nothing for a pair that matches.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.media import g711
from voicecalld.media.audio import BRIDGE_FORMATS, Transcoder

FRAME = bytes(range(160))
PCM_8K = g711.ulaw_to_pcm16(FRAME)


def test_matching_formats_pass_the_bytes_through() -> None:
    same = Transcoder(("mulaw", 8000), BRIDGE_FORMATS["mulaw"])
    assert same.identity
    assert same(FRAME) is FRAME


PCM_16K = PCM_8K * 2


@pytest.mark.parametrize(
    ("source", "target", "audio", "expected"),
    [
        (("mulaw", 8000), ("pcm16", 8000), FRAME, PCM_8K),
        (("alaw", 8000), ("pcm16", 8000), FRAME, g711.alaw_to_pcm16(FRAME)),
        (("alaw", 8000), ("mulaw", 8000), FRAME, g711.pcm16_to_ulaw(g711.alaw_to_pcm16(FRAME))),
        (("mulaw", 8000), ("pcm16", 16000), FRAME, g711.upsample_8k_to_16k(PCM_8K)),
        (("pcm16", 8000), ("mulaw", 8000), PCM_8K, g711.pcm16_to_ulaw(PCM_8K)),
        (
            ("pcm16", 16000),
            ("mulaw", 8000),
            PCM_16K,
            g711.pcm16_to_ulaw(g711.downsample_16k_to_8k(PCM_16K)),
        ),
        (("pcm16", 16000), ("pcm16", 8000), PCM_16K, g711.downsample_16k_to_8k(PCM_16K)),
    ],
)
def test_each_pair_decodes_resamples_and_encodes_in_order(
    source: tuple[str, int], target: tuple[str, int], audio: bytes, expected: bytes
) -> None:
    transcoder = Transcoder(source, target)
    assert not transcoder.identity
    assert transcoder(audio) == expected


@pytest.mark.parametrize(
    ("source", "target"),
    [(("opus", 48000), ("mulaw", 8000)), (("mulaw", 8000), ("pcm16", 24000))],
)
def test_what_cannot_be_converted_is_refused_when_built(
    source: tuple[str, int], target: tuple[str, int]
) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Transcoder(source, target)


@given(st.binary(min_size=1, max_size=641).filter(lambda b: len(b) % 2))
def test_pcm_that_is_not_whole_samples_is_a_value_error(audio: bytes) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        Transcoder(BRIDGE_FORMATS["pcm16"], ("mulaw", 8000))(audio)


@given(st.binary(max_size=480))
def test_mulaw_survives_a_pcm16_bridge_both_ways(audio: bytes) -> None:
    """What the caller says and the app echoes is played back as it was said (μ-law's
    negative zero, 0x7F, comes back as positive zero)."""
    to_app = Transcoder(("mulaw", 8000), BRIDGE_FORMATS["pcm16"])
    to_carrier = Transcoder(BRIDGE_FORMATS["pcm16"], ("mulaw", 8000))
    assert to_carrier(to_app(audio)) == audio.replace(b"\x7f", b"\xff")
