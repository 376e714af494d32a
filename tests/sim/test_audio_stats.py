"""The caller's audio, the tallies and their report, and the scenario conventions."""

from __future__ import annotations

import base64
import wave
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.media import g711
from voicecalld.sim.audio import Audio
from voicecalld.sim.scenario import Outcome, Scenario, by_number
from voicecalld.sim.stats import Tally, percentile, progress, summary


def test_a_tone_is_twenty_millisecond_frames_in_every_encoding() -> None:
    audio = Audio.tone(frequency=400, seconds=1.0)
    mulaw = audio.payloads("mulaw")
    assert len(mulaw) == 50
    assert {len(payload) for payload in mulaw} == {216}, "160 bytes, base64: Twilio's frame"
    assert {len(base64.b64decode(p)) for p in audio.payloads("alaw")} == {160}
    assert {len(base64.b64decode(p)) for p in audio.payloads("pcm16")} == {320}
    assert {len(base64.b64decode(p)) for p in audio.payloads("pcm16", 16000)} == {640}
    assert audio.payloads("mulaw") is mulaw, "encoded once"
    decoded = g711.ulaw_to_pcm16(base64.b64decode(mulaw[1]))
    samples = memoryview(decoded).cast("h")
    assert max(samples) > 7000 and min(samples) < -7000, "a quarter of full scale, both ways"
    with pytest.raises(ValueError, match="cannot send"):
        audio.payloads("opus")


def test_a_speech_file_is_read_and_brought_to_8_khz(tmp_path: Path) -> None:
    path = tmp_path / "hello.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes(b"\x10\x00" * 16000)  # one second
    audio = Audio.from_wav(path)
    assert audio.seconds == pytest.approx(1.0)
    assert audio.pcm[:4] == b"\x10\x00\x10\x00"


@pytest.mark.parametrize(
    ("channels", "rate", "data"),
    [(2, 8000, b"\x00" * 640), (1, 44100, b"\x00" * 640), (1, 8000, b"\x00" * 10)],
)
def test_speech_files_the_simulator_cannot_stream_are_refused(
    tmp_path: Path, channels: int, rate: int, data: bytes
) -> None:
    path = tmp_path / "bad.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(data)
    with pytest.raises(ValueError, match=r"expected 16-bit mono|at least 20 ms"):
        Audio.from_wav(path)
    (tmp_path / "not.wav").write_bytes(b"RIFF????")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        Audio.from_wav(tmp_path / "not.wav")


@given(st.lists(st.floats(0, 1000), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_percentiles_are_nearest_rank(values: list[float], fraction: float) -> None:
    value = percentile(values, fraction)
    assert value in values
    below = sum(v <= value for v in values)
    assert below >= fraction * len(values)
    assert sum(v < value for v in values) < max(1, fraction * len(values))


def test_the_summary_sets_both_sides_and_the_latencies_out() -> None:
    tally = Tally()
    tally.started.update({"outbound": 3})
    tally.outcomes.update({"completed": 2})
    tally.webhooks.update({("twilio ringing", "200"): 3, ("twilio fetch (forged)", "403"): 1})
    tally.streams.update({"opened": 2})
    tally.frames_sent = 12345
    for ms in range(1, 101):
        tally.latency("webhook", ms / 1000)
    text = summary(tally, 12.34, daemon=Counter({"completed": 2, "not ended (active)": 1}))
    assert "still live      1" in text
    assert "twilio fetch (forged)     403      1" in text
    assert "frames sent      12,345" in text
    assert "webhook  100  50.0  90.0  99.0  100.0" in text
    assert "not ended (active)      1" in text
    assert text.endswith("elapsed 12.3s")
    line = progress(tally, 3, 10, 1.5)
    assert "calls 3/10 started, 1 live, 2 ended" in line
    assert "webhooks 4 (1 not 2xx)" in line


def test_the_number_may_ask_for_an_outcome() -> None:
    default = Scenario(talk=9.0)
    assert by_number("+14155550199", default) is default
    assert by_number("+14155550486", default) == Scenario(outcome=Outcome.BUSY, talk=9.0)
    assert by_number("+1415555408", default).outcome is Outcome.NO_ANSWER
    assert by_number("+1415555503", default).outcome is Outcome.FAILED
