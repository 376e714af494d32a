"""Media-stream messages of the three carriers: documented samples in, documented shapes out."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.carriers.base import (
    StreamAudio,
    StreamDtmf,
    StreamEvent,
    StreamIgnored,
    StreamMark,
    StreamProtocol,
    StreamStarted,
    StreamStopped,
)
from voicecalld.carriers.plivo.stream import PlivoStream
from voicecalld.carriers.telnyx.stream import TelnyxStream
from voicecalld.carriers.telnyx.wire import encode_client_state
from voicecalld.carriers.twilio.stream import TwilioStream

from .helpers import CALL_ID, sample

AUDIO = b"\x7e" * 160
TWILIO: StreamProtocol = TwilioStream()
PLIVO: StreamProtocol = PlivoStream()
TELNYX: StreamProtocol = TelnyxStream()
STREAMS = {"twilio": TWILIO, "plivo": PLIVO, "telnyx": TELNYX}


def parse(carrier: str, name: str) -> StreamEvent:
    return STREAMS[carrier].parse(sample(f"{carrier}/stream/{name}.json"))


@pytest.mark.parametrize(
    ("carrier", "name", "expected"),
    [
        ("twilio", "connected", StreamIgnored("connected")),
        (
            "twilio",
            "start",
            StreamStarted(
                "t0k3n",
                "CA11111111111111111111111111111111",
                "MZ18ad3ab5a668481ce02b83e7395059f0",
                "mulaw",
                8000,
            ),
        ),
        ("twilio", "media", StreamAudio(AUDIO)),
        ("twilio", "dtmf", StreamDtmf("1")),
        ("twilio", "mark", StreamMark("utt-7")),
        ("twilio", "stop", StreamStopped()),
        (
            "plivo",
            "start",
            StreamStarted(
                "t0k3n",
                "12345678-1234-1234-1234-123456789abc",
                "87654321-4321-4321-4321-cba987654321",
                "mulaw",
                8000,
            ),
        ),
        ("plivo", "media", StreamAudio(AUDIO)),
        ("plivo", "dtmf", StreamDtmf("5")),
        ("plivo", "playedStream", StreamMark("customer greeting audio")),
        ("plivo", "played", StreamMark("customer greeting audio")),
        ("plivo", "clearedAudio", StreamIgnored("clearedAudio")),
        ("telnyx", "connected", StreamIgnored("connected")),
        (
            "telnyx",
            "start",
            StreamStarted(
                "t0k3n",
                "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
                "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
                "mulaw",
                8000,
            ),
        ),
        ("telnyx", "media", StreamAudio(AUDIO)),
        ("telnyx", "dtmf", StreamDtmf("1")),
        ("telnyx", "mark", StreamMark("utt-7")),
        ("telnyx", "error", StreamIgnored("error")),
        ("telnyx", "stop", StreamStopped()),
    ],
)
def test_documented_messages(carrier: str, name: str, expected: StreamEvent) -> None:
    assert parse(carrier, name) == expected


# -- what we send --------------------------------------------------------------------------------

B64 = base64.b64encode(AUDIO).decode()


@pytest.mark.parametrize(
    ("stream", "built", "documented"),
    [
        (TWILIO, "media", {"event": "media", "streamSid": "MZ1", "media": {"payload": B64}}),
        (TWILIO, "mark", {"event": "mark", "streamSid": "MZ1", "mark": {"name": "utt-7"}}),
        (TWILIO, "clear", {"event": "clear", "streamSid": "MZ1"}),
        (
            PLIVO,
            "media",
            {
                "event": "playAudio",
                "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": B64},
            },
        ),
        (PLIVO, "mark", {"event": "checkpoint", "streamId": "MZ1", "name": "utt-7"}),
        (PLIVO, "clear", {"event": "clearAudio", "streamId": "MZ1"}),
        (TELNYX, "media", {"event": "media", "media": {"payload": B64}}),
        (TELNYX, "mark", {"event": "mark", "mark": {"name": "utt-7"}}),
        (TELNYX, "clear", {"event": "clear"}),
    ],
)
def test_built_messages_have_the_documented_shape(
    stream: StreamProtocol, built: str, documented: dict[str, Any]
) -> None:
    message = {
        "media": lambda: stream.media("MZ1", AUDIO),
        "mark": lambda: stream.mark("MZ1", "utt-7"),
        "clear": lambda: stream.clear("MZ1"),
    }[built]()
    assert isinstance(message, bytes)
    assert orjson.loads(message) == documented


@given(audio=st.binary(max_size=400))
def test_our_twilio_and_telnyx_media_read_back_as_the_same_audio(audio: bytes) -> None:
    for stream in (TWILIO, TELNYX):
        assert stream.parse(stream.media("MZ1", audio)) == StreamAudio(audio)


# -- the edges -----------------------------------------------------------------------------------


def _with(carrier: str, name: str, change: Any) -> bytes:
    frame = orjson.loads(sample(f"{carrier}/stream/{name}.json"))
    change(frame)
    return orjson.dumps(frame)


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
def test_only_the_inbound_track_is_audio(carrier: str) -> None:
    message = _with(carrier, "media", lambda f: f["media"].update(track="outbound"))
    assert STREAMS[carrier].parse(message) == StreamIgnored("media")


def test_plivo_l16_is_pcm16_without_a_swap() -> None:
    def l16(frame: dict[str, Any]) -> None:
        frame["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000}

    started = PLIVO.parse(_with("plivo", "start", l16))
    assert isinstance(started, StreamStarted)
    assert (started.encoding, started.sample_rate) == ("pcm16", 16000)


def test_plivo_extra_headers_may_use_commas() -> None:
    message = _with("plivo", "start", lambda f: f.update(extra_headers=f"token=abc,call={CALL_ID}"))
    started = PLIVO.parse(message)
    assert isinstance(started, StreamStarted)
    assert started.token == "abc"


def test_plivo_stop_is_accepted() -> None:
    assert PLIVO.parse(b'{"event":"stop","streamId":"x"}') == StreamStopped()


def test_telnyx_token_from_client_state() -> None:
    def from_state(frame: dict[str, Any]) -> None:
        del frame["start"]["custom_parameters"]
        frame["start"]["client_state"] = encode_client_state(CALL_ID, "s3cr3t")

    started = TELNYX.parse(_with("telnyx", "start", from_state))
    assert isinstance(started, StreamStarted)
    assert started.token == "s3cr3t"


def test_telnyx_pcma_is_alaw() -> None:
    message = _with("telnyx", "start", lambda f: f["start"]["media_format"].update(encoding="PCMA"))
    started = TELNYX.parse(message)
    assert isinstance(started, StreamStarted)
    assert started.encoding == "alaw"


@pytest.mark.parametrize(
    ("carrier", "change"),
    [
        ("twilio", lambda f: f["start"]["customParameters"].pop("token")),
        ("twilio", lambda f: f["start"]["mediaFormat"].update(encoding="audio/x-l16")),
        ("twilio", lambda f: f["start"]["mediaFormat"].update(sampleRate="8000")),
        ("twilio", lambda f: f["start"].update(callSid=7)),
        ("plivo", lambda f: f.update(extra_headers="call=x")),
        ("plivo", lambda f: f.pop("extra_headers")),
        ("plivo", lambda f: f["start"]["mediaFormat"].update(encoding="audio/ogg")),
        (
            "telnyx",
            lambda f: f["start"].update(
                custom_parameters={}, client_state="aGF2ZSBhIG5pY2UgZGF5ID1d"
            ),
        ),
        ("telnyx", lambda f: f["start"]["media_format"].update(encoding="L16")),
        ("telnyx", lambda f: f.pop("stream_id")),
    ],
)
def test_unusable_starts_are_refused(carrier: str, change: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the socket is closed
        STREAMS[carrier].parse(_with(carrier, "start", change))


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"not json",
        b"[]",
        b'"media"',
        b"{}",
        b'{"event":7}',
        b'{"event":"media"}',
        b'{"event":"media","media":[]}',
        b'{"event":"media","media":{"payload":"!!!"}}',
        b'{"event":"media","media":{"payload":"fn5"}}',
        b'{"event":"media","media":{"payload":"f\xc3\xa9=="}}',
        b'{"event":"media","media":{"payload":12}}',
        b'{"event":"dtmf","dtmf":{"digit":"12"}}',
        b'{"event":"start","start":null}',
    ],
)
@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
def test_malformed_messages_raise_value_error(carrier: str, message: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is "ValueError only"
        STREAMS[carrier].parse(message)


@pytest.mark.parametrize(
    ("carrier", "message"),
    [
        ("twilio", b'{"event":"mark","mark":{"name":""}}'),
        ("telnyx", b'{"event":"mark","mark":{"name":""}}'),
        ("plivo", b'{"event":"playedStream","name":""}'),
        ("plivo", b'{"event":"played"}'),
    ],
)
def test_marks_need_a_name(carrier: str, message: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        STREAMS[carrier].parse(message)


frames = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=10)
    | st.sampled_from(
        ["media", "start", "dtmf", "mark", "stop", "playedStream", "inbound", "fn5+", "PCMU"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "event",
                    "media",
                    "payload",
                    "track",
                    "start",
                    "dtmf",
                    "digit",
                    "mark",
                    "name",
                    "customParameters",
                    "token",
                    "mediaFormat",
                    "media_format",
                    "encoding",
                    "extra_headers",
                    "stream_id",
                    "streamSid",
                    "callSid",
                    "callId",
                    "streamId",
                    "call_control_id",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@given(frame=frames, raw=st.binary(max_size=60))
def test_any_input_raises_value_error_only(frame: object, raw: bytes) -> None:
    try:
        message = orjson.dumps(frame)
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        message = raw
    events = (StreamStarted, StreamAudio, StreamDtmf, StreamMark, StreamStopped, StreamIgnored)
    for stream in STREAMS.values():
        for candidate in (message, raw):
            try:
                event = stream.parse(candidate)
            except ValueError:
                continue
            assert isinstance(event, events)
