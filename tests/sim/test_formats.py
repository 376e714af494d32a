"""The simulator speaks the carriers' real formats.

Its webhooks carry at least every field of the documented samples (tests/carriers/samples, from
the carriers' docs), its media-stream messages have exactly the samples' layout, and it reads
the instructions the official SDKs build (TwiML from ``twilio.twiml``, Plivo XML from
``plivoxml``) as the carrier runs them, refusing what the carrier would refuse.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from plivo import plivoxml
from twilio.twiml.voice_response import Connect, Start, VoiceResponse

from voicecalld.sim.dialect import (
    Answer,
    Context,
    Dialect,
    Digits,
    Hangup,
    Happening,
    Heard,
    Pause,
    Redirect,
    Say,
    StartStream,
    StopStream,
    Stream,
    StreamOrder,
)
from voicecalld.sim.plivo_voice import PlivoVoice, read_plivo_xml
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id
from voicecalld.sim.telnyx_voice import TelnyxVoice
from voicecalld.sim.twilio_voice import TwilioVoice, read_twiml

SAMPLES = Path(__file__).parent.parent / "carriers" / "samples"
ACCOUNTS = SimAccounts()
URL = "https://voice.example.com/webhooks/x?call=c_0123456789abcdef01234567"


def sample_form(name: str) -> set[str]:
    return {key for key, _ in parse_qsl((SAMPLES / name).read_text().strip())}


def sample_json(name: str) -> Any:
    return orjson.loads((SAMPLES / name).read_bytes())


def a_call(
    carrier: str, direction: str = "outbound", status: SimStatus = SimStatus.RINGING
) -> SimCall:
    call = SimCall(
        carrier=carrier,
        carrier_id=new_carrier_id(carrier),
        from_number="+14155550100",
        to="+14155550199",
        direction=direction,
        answer_url=URL,
        ring_url=URL,
        status_callback=URL,
        status_events=("initiated", "ringing", "answered", "completed"),
        request_id=new_carrier_id("plivo")
        if carrier == "plivo" and direction != "inbound"
        else None,
        client_state="Y2FsbD1jXzE=",
    )
    if status is SimStatus.COMPLETED:
        call.set_status(SimStatus.IN_PROGRESS)  # answered, then hung up
    call.set_status(status)
    return call


def fields(dialect: Dialect, call: SimCall, happening: Happening) -> set[str]:
    (webhook,) = dialect.webhooks(call, happening, Context(now=time.time(), duration=3))
    return {name for name, _ in webhook.form}


def layout(document: Any) -> Any:
    """The shape of a JSON document: its keys, recursively (values' types for leaves)."""
    if isinstance(document, dict):
        return {key: layout(value) for key, value in document.items()}
    if isinstance(document, list):
        return "list"
    return type(document).__name__


# -- webhooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "direction", "status", "happening"),
    [
        ("inbound_call.form", "inbound", SimStatus.RINGING, Happening.FETCH),
        ("twiml_fetch_outbound.form", "outbound", SimStatus.IN_PROGRESS, Happening.FETCH),
        ("status_initiated.form", "outbound", SimStatus.QUEUED, Happening.INITIATED),
        ("status_ringing.form", "outbound", SimStatus.RINGING, Happening.RINGING),
        ("status_answered.form", "outbound", SimStatus.IN_PROGRESS, Happening.ANSWERED),
        ("status_completed.form", "outbound", SimStatus.COMPLETED, Happening.ENDED),
        ("status_busy.form", "outbound", SimStatus.BUSY, Happening.ENDED),
        ("status_no_answer.form", "outbound", SimStatus.NO_ANSWER, Happening.ENDED),
    ],
)
def test_twilio_webhooks_carry_the_documented_fields(
    sample: str, direction: str, status: SimStatus, happening: Happening
) -> None:
    made = fields(TwilioVoice(ACCOUNTS), a_call("twilio", direction, status), happening)
    assert sample_form(f"twilio/{sample}") <= made


def test_twilio_status_callbacks_follow_the_subscription() -> None:
    dialect, call = TwilioVoice(ACCOUNTS), a_call("twilio")
    call.status_events = ()
    context = Context(now=time.time(), sequence=7)
    assert dialect.webhooks(call, Happening.RINGING, context) == []
    call.set_status(SimStatus.NO_ANSWER)
    (ended,) = dialect.webhooks(call, Happening.ENDED, context)
    form = dict(ended.form)
    assert (form["CallStatus"], form["CallbackSource"], form["SequenceNumber"]) == (
        "no-answer",
        "call-progress-events",
        "7",
    )
    assert form["Direction"] == "outbound-api"
    (fetch,) = dialect.webhooks(call, Happening.FETCH, context)
    assert fetch.wants_answer and "CallbackSource" not in dict(fetch.form)


@pytest.mark.parametrize(
    ("sample", "direction", "status", "happening"),
    [
        ("answer_inbound.form", "inbound", SimStatus.RINGING, Happening.FETCH),
        ("answer_outbound.form", "outbound", SimStatus.IN_PROGRESS, Happening.FETCH),
        ("ring_outbound.form", "outbound", SimStatus.RINGING, Happening.RINGING),
        ("hangup_outbound.form", "outbound", SimStatus.COMPLETED, Happening.ENDED),
        ("hangup_busy.form", "outbound", SimStatus.BUSY, Happening.ENDED),
    ],
)
def test_plivo_callbacks_carry_the_documented_fields(
    sample: str, direction: str, status: SimStatus, happening: Happening
) -> None:
    made = fields(PlivoVoice(ACCOUNTS), a_call("plivo", direction, status), happening)
    assert sample_form(f"plivo/{sample}") <= made


def test_plivo_writes_numbers_bare_and_events_by_url() -> None:
    dialect, call = PlivoVoice(ACCOUNTS), a_call("plivo")
    (ring,) = dialect.webhooks(call, Happening.RINGING, Context(now=time.time()))
    form = dict(ring.form)
    assert (form["From"], form["Event"], form["RequestUUID"]) == (
        "14155550100",
        "Ring",
        call.request_id,
    )
    assert dialect.webhooks(call, Happening.INITIATED, Context(now=time.time())) == []
    call.set_status(SimStatus.CANCELED)
    (hangup,) = dialect.webhooks(call, Happening.ENDED, Context(now=time.time()))
    assert dict(hangup.form)["CallStatus"] == "cancel"


@pytest.mark.parametrize(
    ("sample", "status", "happening"),
    [
        ("call_initiated.json", SimStatus.RINGING, Happening.INITIATED),
        ("call_answered.json", SimStatus.IN_PROGRESS, Happening.ANSWERED),
        ("call_hangup.json", SimStatus.COMPLETED, Happening.ENDED),
        ("call_dtmf_received.json", SimStatus.IN_PROGRESS, Happening.DTMF),
        ("call_speak_ended.json", SimStatus.IN_PROGRESS, Happening.SPEAK_ENDED),
    ],
)
def test_telnyx_webhooks_carry_the_documented_fields(
    sample: str, status: SimStatus, happening: Happening
) -> None:
    call = a_call("telnyx", "inbound", status)
    (webhook,) = TelnyxVoice(ACCOUNTS).webhooks(call, happening, Context(now=time.time()))
    made, documented = orjson.loads(webhook.json), sample_json(f"telnyx/{sample}")
    assert set(documented["data"]) <= set(made["data"])
    assert set(documented["data"]["payload"]) <= set(made["data"]["payload"])
    assert made["data"]["event_type"] == documented["data"]["event_type"]
    assert made["meta"] == {"attempt": 1, "delivered_to": URL}


def test_telnyx_says_incoming_and_outgoing_and_why_a_call_ended() -> None:
    dialect = TelnyxVoice(ACCOUNTS)
    inbound, outbound = a_call("telnyx", "inbound"), a_call("telnyx", "outbound")
    for call, direction, state in (
        (inbound, "incoming", "parked"),
        (outbound, "outgoing", "bridging"),
    ):
        (webhook,) = dialect.webhooks(call, Happening.INITIATED, Context(now=time.time()))
        payload = orjson.loads(webhook.json)["data"]["payload"]
        assert (payload["direction"], payload["state"]) == (direction, state)
    assert dialect.webhooks(outbound, Happening.RINGING, Context(now=time.time())) == []
    outbound.set_status(SimStatus.BUSY)
    inbound.record("reject", {})
    inbound.set_status(SimStatus.BUSY)
    causes = []
    for call in (outbound, inbound):
        (ended,) = dialect.webhooks(call, Happening.ENDED, Context(now=time.time()))
        causes.append(orjson.loads(ended.json)["data"]["payload"]["hangup_cause"])
    assert causes == ["user_busy", "call_rejected"]


# -- instructions ------------------------------------------------------------------------------


def test_twiml_built_by_the_sdk_runs_verb_by_verb() -> None:
    response = VoiceResponse()
    response.say("Hello")
    connect = Connect()
    stream = connect.stream(url="wss://voice.example.com/media/twilio")
    stream.parameter(name="token", value="t0k3n")
    response.append(connect)
    response.pause(length=2)
    response.play(digits="12w")
    response.hangup()
    verbs = read_twiml(str(response).encode())
    assert verbs == (
        Say("Hello"),
        Stream(StreamOrder("wss://voice.example.com/media/twilio", parameters={"token": "t0k3n"})),
        Pause(2.0),
        Digits("12w"),
        Hangup(),
    )


def test_twiml_start_stream_is_one_way_and_does_not_block() -> None:
    response = VoiceResponse()
    start = Start()
    start.stream(url="wss://voice.example.com/s")
    response.append(start)
    response.reject(reason="busy")
    (stream, reject) = read_twiml(str(response).encode())
    assert isinstance(stream, Stream)
    assert not stream.order.bidirectional and not stream.order.blocking
    assert reject == Hangup(rejected=True)


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"not xml",
        b"<Hello/>",
        b"<Response><Dial>+1555</Dial></Response>",
        b'<Response><Connect><Stream url="https://x.test/s"/></Connect></Response>',
        b'<Response><Connect><Stream url="wss://x.test/s?token=1"/></Connect></Response>',
        b"<Response><Connect/></Response>",
    ],
)
def test_twiml_twilio_cannot_run_is_an_application_error(document: bytes) -> None:
    with pytest.raises(ValueError, match=r"TwiML|<Stream url>|<Connect>"):
        read_twiml(document)


def test_plivo_xml_built_by_the_sdk_runs_element_by_element() -> None:
    response = plivoxml.ResponseElement()
    response.add(plivoxml.SpeakElement("Hello"))
    response.add(
        plivoxml.StreamElement(
            "wss://voice.example.com/media/plivo",
            bidirectional=True,
            keepCallAlive=True,
            audioTrack="inbound",
            contentType="audio/x-mulaw;rate=8000",
            extraHeaders="token=abc,call=c1",
        )
    )
    response.add(plivoxml.WaitElement(length=3))
    response.add(plivoxml.HangupElement(reason="rejected"))
    verbs = read_plivo_xml(response.to_string().encode())
    order = StreamOrder("wss://voice.example.com/media/plivo", extra_headers="token=abc,call=c1")
    assert verbs == (Say("Hello"), Stream(order), Pause(3.0), Hangup(rejected=True))


def test_a_plivo_stream_asked_for_without_attributes_gets_plivos_defaults() -> None:
    response = plivoxml.ResponseElement()
    response.add(plivoxml.StreamElement("wss://voice.example.com/media/plivo"))
    ((stream),) = read_plivo_xml(response.to_string().encode())
    assert isinstance(stream, Stream)
    assert (stream.order.encoding, stream.order.sample_rate) == ("pcm16", 8000), "L16 by default"
    assert not stream.order.bidirectional and not stream.order.blocking


@pytest.mark.parametrize(
    "document",
    [
        b"<Response><GetInput/></Response>",
        b"<Response><Stream>https://x.test/</Stream></Response>",
        b'<Response><Stream contentType="audio/x-mulaw;rate=16000">wss://x.test/</Stream></Response>',
        b'<Response><Stream bidirectional="true" audioTrack="both">wss://x.test/</Stream></Response>',
    ],
)
def test_plivo_xml_plivo_cannot_run_is_invalid(document: bytes) -> None:
    with pytest.raises(ValueError, match=r"Plivo XML|<Stream"):
        read_plivo_xml(document)


def test_rest_actions_become_directives() -> None:
    twilio, plivo, telnyx = TwilioVoice(ACCOUNTS), PlivoVoice(ACCOUNTS), TelnyxVoice(ACCOUNTS)
    live, ended = (
        a_call("twilio", status=SimStatus.IN_PROGRESS),
        a_call("twilio", status=SimStatus.COMPLETED),
    )
    assert twilio.directive(live, "status", {"Status": "canceled"}) is None
    assert twilio.directive(ended, "status", {"Status": "completed"}) == Hangup()
    twiml = "<Response><Say>Hi</Say></Response>"
    assert twilio.directive(live, "twiml", {"Twiml": twiml}) == Redirect(verbs=(Say("Hi"),))
    assert twilio.directive(live, "twiml", {"Url": "https://x.test/"}) == Redirect(
        url="https://x.test/"
    )
    call = a_call("plivo")
    assert plivo.directive(call, "cancel", {}) == Hangup()
    assert plivo.directive(call, "speak", {"text": "Hi"}) == Say("Hi")
    assert plivo.directive(call, "dtmf", {"digits": "1"}) is None
    call = a_call("telnyx", "inbound")
    assert telnyx.directive(call, "answer", {}) == Answer()
    assert telnyx.directive(call, "reject", {"cause": "CALL_REJECTED"}) == Hangup(rejected=True)
    assert telnyx.directive(call, "streaming_stop", {}) == StopStream()
    assert telnyx.directive(call, "speak", {"payload": "Hi"}) == Say("Hi")


def test_a_telnyx_stream_follows_its_command() -> None:
    call = a_call("telnyx", "inbound")
    fields = {
        "stream_url": "wss://voice.example.com/media/telnyx",
        "stream_codec": "PCMA",
        "stream_bidirectional_mode": "rtp",
        "client_state": "c3RhdGU=",
        "stream_auth_token": "secret",
        "custom_parameters": [{"name": "token", "value": "t0k3n"}],
    }
    directive = TelnyxVoice(ACCOUNTS).directive(call, "streaming_start", fields)
    assert directive == StartStream(
        StreamOrder(
            "wss://voice.example.com/media/telnyx",
            encoding="alaw",
            parameters={"token": "t0k3n"},
            client_state="c3RhdGU=",
            auth_token="secret",
        )
    )
    mp3 = TelnyxVoice(ACCOUNTS).directive(call, "answer", {"stream_url": fields["stream_url"]})
    assert isinstance(mp3, Answer) and mp3.stream is not None
    assert not mp3.stream.bidirectional, "mp3 is Telnyx's default: raw audio back is not played"
    assert mp3.stream.client_state == call.client_state
    with pytest.raises(ValueError, match="stream_url"):
        TelnyxVoice(ACCOUNTS).directive(call, "streaming_start", {"stream_url": "http://x.test/"})


# -- media streams -----------------------------------------------------------------------------

PAYLOAD = base64.b64encode(b"\x7e" * 160).decode()


def messages_of(dialect: Dialect, order: StreamOrder) -> dict[str, Any]:
    call = a_call(dialect.name, status=SimStatus.IN_PROGRESS)
    stream_id = dialect.new_stream_id()
    messages = dialect.stream(call, order, stream_id)
    made = {orjson.loads(m)["event"]: orjson.loads(m) for m in messages.opening()}
    for message in (
        messages.media(1, 0, 1_705_312_200_000, PAYLOAD),
        messages.dtmf("1"),
        messages.played("utt-7"),
        messages.cleared(),
        messages.stop(),
    ):
        if message is not None:
            made[orjson.loads(message)["event"]] = orjson.loads(message)
    return made


@pytest.mark.parametrize(
    ("dialect", "order", "events"),
    [
        (
            TwilioVoice(ACCOUNTS),
            StreamOrder("wss://x.test/", parameters={"token": "t0k3n", "call": "c_1"}),
            ("connected", "start", "media", "dtmf", "mark", "stop"),
        ),
        (
            PlivoVoice(ACCOUNTS),
            StreamOrder("wss://x.test/", extra_headers="token=t0k3n,call=c_1"),
            ("start", "media", "dtmf", "playedStream", "clearedAudio"),
        ),
        (
            TelnyxVoice(ACCOUNTS),
            StreamOrder(
                "wss://x.test/",
                client_state="c3RhdGU=",
                parameters={"customer_id": "1", "token": "t"},
            ),
            ("connected", "start", "media", "dtmf", "mark", "stop"),
        ),
    ],
    ids=["twilio", "plivo", "telnyx"],
)
def test_stream_messages_have_the_documented_layout(
    dialect: Dialect, order: StreamOrder, events: tuple[str, ...]
) -> None:
    made = messages_of(dialect, order)
    assert tuple(made) == events
    for event, message in made.items():
        documented = sample_json(f"{dialect.name}/stream/{event}.json")
        if event == "start" and dialect.name == "telnyx":
            documented["start"]["tags"] = []  # the sample's call has tags, ours none
        assert layout(message) == layout(documented), event


def test_stream_messages_count_and_echo() -> None:
    call = a_call("plivo", status=SimStatus.IN_PROGRESS)
    order = StreamOrder("wss://x.test/", extra_headers="token=t0k3n,call=c_1")
    messages = PlivoVoice(ACCOUNTS).stream(call, order, "S1")
    (start,) = messages.opening()
    media = orjson.loads(messages.media(3, 40, 1_705_312_200_040, PAYLOAD))
    assert orjson.loads(start)["extra_headers"] == "token=t0k3n;call=c_1"
    assert (media["sequenceNumber"], media["media"]["chunk"]) == (2, 3)
    assert media["media"]["timestamp"] == "1705312200040"


@pytest.mark.parametrize(
    ("dialect", "message", "heard"),
    [
        (
            "twilio",
            {"event": "media", "streamSid": "S1", "media": {"payload": PAYLOAD}},
            Heard("media", b"\x7e" * 160),
        ),
        (
            "twilio",
            {"event": "mark", "streamSid": "S1", "mark": {"name": "m"}},
            Heard("mark", name="m"),
        ),
        ("twilio", {"event": "clear", "streamSid": "S1"}, Heard("clear")),
        (
            "twilio",
            {"event": "media", "streamSid": "S2", "media": {"payload": PAYLOAD}},
            Heard("invalid"),
        ),
        (
            "twilio",
            {"event": "media", "streamSid": "S1", "media": {"playload": PAYLOAD}},
            Heard("invalid"),
        ),
        (
            "plivo",
            {
                "event": "playAudio",
                "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": PAYLOAD},
            },
            Heard("media", b"\x7e" * 160),
        ),
        ("plivo", {"event": "checkpoint", "streamId": "S1", "name": "m"}, Heard("mark", name="m")),
        ("plivo", {"event": "clearAudio", "streamId": "S1"}, Heard("clear")),
        (
            "plivo",
            {"event": "playAudio", "media": {"contentType": "audio/mpeg", "payload": PAYLOAD}},
            Heard("invalid"),
        ),
        (
            "telnyx",
            {"event": "media", "media": {"payload": PAYLOAD}},
            Heard("media", b"\x7e" * 160),
        ),
        ("telnyx", {"event": "mark", "mark": {"name": "m"}}, Heard("mark", name="m")),
        ("telnyx", {"event": "clear"}, Heard("clear")),
        ("telnyx", {"event": "media", "media": {"payload": "!!"}}, Heard("invalid")),
    ],
)
def test_what_voicecalld_sends_is_read_as_the_carrier_reads_it(
    dialect: str, message: dict[str, Any], heard: Heard
) -> None:
    dialects: dict[str, Dialect] = {
        "twilio": TwilioVoice(ACCOUNTS),
        "plivo": PlivoVoice(ACCOUNTS),
        "telnyx": TelnyxVoice(ACCOUNTS),
    }
    carrier = dialects[dialect]
    messages = carrier.stream(a_call(dialect), StreamOrder("wss://x.test/"), "S1")
    assert messages.read(orjson.dumps(message)) == heard
    assert messages.read(b"\xff not json") == Heard("invalid")
