"""The bridge's audio conversions and frames (:mod:`voicecalld.media.audio`), pure: no event
loop, no socket.

:mod:`voicecalld.media.g711` is checked against the ITU tables in ``test_g711.py``; here, that
each pair of formats runs the steps it needs, in order, and nothing for a pair that matches;
and that the framer cuts any chunks into whole frames, losing and repeating nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.media import g711
from voicecalld.media.audio import BRIDGE_FORMATS, Framer, Transcoder, frame_bytes

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


@pytest.mark.parametrize(
    ("encoding", "expected"), [("mulaw", 160), ("pcm16", 320), ("pcm16-16k", 640)]
)
def test_20_ms_of_each_bridge_format(encoding: str, expected: int) -> None:
    assert frame_bytes(BRIDGE_FORMATS[encoding], 20) == expected


@given(st.lists(st.binary(max_size=700), max_size=20), st.sampled_from([160, 320, 640]))
def test_the_framer_cuts_any_chunks_into_whole_frames_in_order(
    chunks: list[bytes], size: int
) -> None:
    framer = Framer(size)
    frames = [frame for chunk in chunks for frame in framer.cut(chunk)]
    assert all(len(frame) == size for frame in frames)
    assert b"".join(frames) + framer.rest == b"".join(chunks)
    assert len(framer.rest) < size


def test_a_whole_frame_with_nothing_kept_is_not_copied() -> None:
    framer = Framer(160)
    assert framer.cut(FRAME)[0] is FRAME
    assert framer.cut(FRAME[:100]) == []
    assert framer.cut(FRAME) == [FRAME[:100] + FRAME[:60]]
    assert framer.rest == FRAME[60:]


def test_a_frame_holds_a_byte_at_least() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        Framer(0)
