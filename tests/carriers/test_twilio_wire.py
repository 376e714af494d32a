"""Twilio webhooks: the SDK's RequestValidator and TwiML builder are the oracles."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode, urlparse

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator, add_port, remove_port
from twilio.twiml.voice_response import Connect, VoiceResponse

from voicecalld.calls.model import Direction, EndReason
from voicecalld.carriers.base import (
    CarrierStatus,
    Instructions,
    MalformedWebhook,
    Reply,
    WebhookEvent,
    WebhookKind,
)
from voicecalld.carriers.twilio import wire

from .helpers import (
    CALL_ID,
    hostnames,
    multi_fields,
    paths,
    queries,
    request,
    sample,
    xml_tree,
)

TOKEN = "12345"
BASE = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
JSON_BODY = '{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
WEBHOOK = f"https://voice.example.com/webhooks/twilio?call={CALL_ID}"
MEDIA = "wss://voice.example.com/media/twilio"


class MultiParams(dict[str, list[str]]):
    """A multidict as the SDK reads one (``getall``, like Flask's MultiDict)."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def signed(url: str, fields: dict[str, str] | dict[str, list[str]], token: str = TOKEN) -> Any:
    body = urlencode(fields, doseq=True).encode()
    headers = {wire.SIGNATURE_HEADER: wire.signature(token, url, fields)}
    return request(url, body, headers)


# -- the SDK's fixed vectors (carriers.md §1.1) -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (BASE, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "kvajT1Ptam85bY51eRf/AJRuM3w=",
        ),
        (
            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "CYn1h0gLBdNxDGkKJg6hYohgeD8=",
        ),
        (
            "http://mycompany.com:80/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        ),
        (
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            VECTOR_PARAMS,
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        ),
        (
            BASE,
            {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]},
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
        ),
    ],
)
def test_signature_matches_the_sdk_vectors(url: str, params: dict[str, Any], expected: str) -> None:
    assert wire.signature(TOKEN, url, params) == expected
    assert (
        RequestValidator(TOKEN).compute_signature(
            url, MultiParams({k: v if isinstance(v, list) else [v] for k, v in params.items()})
        )
        == expected
    )


@pytest.mark.parametrize(
    ("url", "sig"),
    [
        (BASE, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (BASE, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443, seen without
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", "CYn1h0gLBdNxDGkKJg6hYohgeD8="),
        ("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ],
)
def test_port_variants_are_accepted_as_the_sdk_accepts_them(url: str, sig: str) -> None:
    body = urlencode(VECTOR_PARAMS).encode()
    assert wire.verify(request(url, body, {wire.SIGNATURE_HEADER: sig}), TOKEN)
    assert RequestValidator(TOKEN).validate(url, VECTOR_PARAMS, sig)


def test_a_port_never_signed_is_refused() -> None:
    body = urlencode(VECTOR_PARAMS).encode()
    signed_8443 = wire.signature(
        TOKEN, "https://mycompany.com:8443/myapp.php?foo=1&bar=2", VECTOR_PARAMS
    )
    url = "https://mycompany.com:8444/myapp.php?foo=1&bar=2"
    assert not wire.verify(request(url, body, {wire.SIGNATURE_HEADER: signed_8443}), TOKEN)
    assert not RequestValidator(TOKEN).validate(url, VECTOR_PARAMS, signed_8443)


def test_multi_valued_params_sort_by_value() -> None:
    fields = {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]}
    req = request(
        BASE,
        b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234",
        {wire.SIGNATURE_HEADER: "IK+Dwps556ElfBT0I3Rgjkr1wJU="},
    )
    assert wire.verify(req, TOKEN)
    assert RequestValidator(TOKEN).validate(
        BASE, MultiParams(fields), "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    )


# -- JSON bodies ---------------------------------------------------------------------------------


def test_json_body_with_a_matching_hash_is_valid() -> None:
    url = f"{BASE}&bodySHA256={BODY_HASH}"
    sig = "a9nBmqA0ju/hNViExpshrM61xv4="
    headers = {wire.SIGNATURE_HEADER: sig, "content-type": "application/json"}
    assert wire.verify(request(url, JSON_BODY.encode(), headers), TOKEN)
    assert RequestValidator(TOKEN).validate(url, JSON_BODY, sig)


def test_json_body_that_does_not_match_its_hash_is_invalid() -> None:
    url = f"{BASE}&bodySHA256={BODY_HASH}"
    sig = "a9nBmqA0ju/hNViExpshrM61xv4="
    forged = b'{"property": "forged", "boolean": true}'
    assert not wire.verify(request(url, forged, {wire.SIGNATURE_HEADER: sig}), TOKEN)
    assert not RequestValidator(TOKEN).validate(url, forged.decode(), sig)
    # The SDK trap (twilio-python#885): passing {} skips the body check entirely.
    assert RequestValidator(TOKEN).validate(url, {}, sig)


def test_json_body_without_a_hash_is_invalid() -> None:
    sig = wire.signature(TOKEN, BASE, {})
    headers = {wire.SIGNATURE_HEADER: sig, "content-type": "application/json"}
    assert not wire.verify(request(BASE, JSON_BODY.encode(), headers), TOKEN)
    with pytest.raises(TypeError):  # the SDK refuses a str body without bodySHA256
        RequestValidator(TOKEN).validate(BASE, JSON_BODY, sig)


# -- properties against the SDK ------------------------------------------------------------------

urls = st.builds(
    lambda scheme, host, port, path, query: (
        f"{scheme}://{host}{port}{path or '/'}{'?' + query if query else ''}"
    ),
    st.sampled_from(["http", "https"]),
    hostnames,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    paths,
    queries,
)


@given(url=urls, fields=multi_fields, token=st.text(min_size=1, max_size=20))
def test_signature_agrees_with_the_sdk(url: str, fields: dict[str, list[str]], token: str) -> None:
    assert wire.signature(token, url, fields) == RequestValidator(token).compute_signature(
        url, MultiParams(fields)
    )


@given(
    url=urls, fields=multi_fields, variant=st.sampled_from(["same", "with-port", "without-port"])
)
def test_verify_accepts_what_the_sdk_accepts(
    url: str, fields: dict[str, list[str]], variant: str
) -> None:
    signing_url = {"same": url, "with-port": _add_port(url), "without-port": _remove_port(url)}[
        variant
    ]
    sig = RequestValidator(TOKEN).compute_signature(signing_url, MultiParams(fields))
    req = request(url, urlencode(fields, doseq=True).encode(), {wire.SIGNATURE_HEADER: sig})
    assert wire.verify(req, TOKEN)
    assert RequestValidator(TOKEN).validate(url, MultiParams(fields), sig)


@given(url=urls, fields=multi_fields, other=multi_fields, sig=st.text(max_size=40))
def test_verify_rejects_what_the_sdk_rejects(
    url: str, fields: dict[str, list[str]], other: dict[str, list[str]], sig: str
) -> None:
    assume(_canonical(other) != _canonical(fields))
    wrong = RequestValidator(TOKEN).compute_signature(url, MultiParams(other))
    for candidate in (wrong, sig):
        req = request(
            url, urlencode(fields, doseq=True).encode(), {wire.SIGNATURE_HEADER: candidate}
        )
        sdk = RequestValidator(TOKEN).validate(url, MultiParams(fields), candidate)
        assert wire.verify(req, TOKEN) is sdk is False


def _canonical(fields: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    return sorted((name, sorted(set(values))) for name, values in fields.items())


def _add_port(url: str) -> str:
    return str(add_port(urlparse(url)))


def _remove_port(url: str) -> str:
    return str(remove_port(urlparse(url)))


@pytest.mark.parametrize(
    ("seen", "signed_as"),
    [
        ("https://[2001:db8::1]:8443/webhooks/twilio", "https://[2001:db8::1]/webhooks/twilio"),
        ("https://[2001:db8::1]/webhooks/twilio", "https://[2001:db8::1]:443/webhooks/twilio"),
        ("https://user:pw@voice.example.com:8443/w", "https://user:pw@voice.example.com/w"),
        ("https://user:pw@voice.example.com/w", "https://user:pw@voice.example.com:443/w"),
        ("wss://voice.example.com/media/twilio", "wss://voice.example.com:443/media/twilio"),
    ],
)
def test_ports_are_handled_without_mangling_ipv6_or_userinfo(seen: str, signed_as: str) -> None:
    fields = {"CallSid": "CA" + "1" * 32}
    sig = wire.signature(TOKEN, signed_as, fields)
    req = request(seen, urlencode(fields).encode(), {wire.SIGNATURE_HEADER: sig})
    assert wire.verify(req, TOKEN)


def test_the_sdk_mangles_ipv6_ports() -> None:
    """Why voicecalld does not reuse ``remove_port``: the SDK cuts at the first ``:``."""
    assert remove_port(urlparse("https://[::1]:8443/p")) == "https://[/p"


def test_fail_closed() -> None:
    req = signed(WEBHOOK, {"CallSid": "CA" + "1" * 32})
    assert not wire.verify(req, "")
    assert not wire.verify(req, TOKEN + "x")
    unsigned = request(WEBHOOK, req.body)
    assert not wire.has_signature(unsigned.headers)
    assert not wire.verify(unsigned, TOKEN)
    assert wire.has_signature(req.headers)


@given(
    url=st.text(max_size=60),
    body=st.binary(max_size=80),
    header=st.text(max_size=40),
    content_type=st.sampled_from(["", "application/json", "application/x-www-form-urlencoded"]),
)
def test_verify_never_raises(url: str, body: bytes, header: str, content_type: str) -> None:
    req = request(url, body, {wire.SIGNATURE_HEADER: header, "content-type": content_type})
    assert wire.verify(req, TOKEN) is False
    assert len(wire.replay_key(req)) == 64


# -- replay keys ---------------------------------------------------------------------------------


def test_replay_key_is_stable_and_bounded() -> None:
    fields = {"CallSid": "CA" + "1" * 32, "CallStatus": "ringing"}
    first = signed(WEBHOOK, fields)
    assert wire.replay_key(first) == wire.replay_key(signed(WEBHOOK, fields))
    assert len(wire.replay_key(first)) == 64
    other = signed(WEBHOOK, {**fields, "CallStatus": "completed"})
    assert wire.replay_key(other) != wire.replay_key(first)


def test_replay_key_ignores_how_the_signature_is_spelled() -> None:
    fields = {"CallSid": "CA" + "1" * 32}
    req = signed(WEBHOOK, fields)
    sig = req.headers[wire.SIGNATURE_HEADER]
    respelled = request(
        WEBHOOK,
        req.body,
        {wire.SIGNATURE_HEADER: sig.rstrip("=").replace("+", "-").replace("/", "_")},
    )
    assert wire.verify(respelled, TOKEN)
    assert wire.replay_key(respelled) == wire.replay_key(req)


def test_replay_key_ignores_duplicated_values_the_signature_ignores() -> None:
    fields = {"CallSid": ["CA" + "1" * 32], "Digits": ["1", "1"]}
    once = signed(WEBHOOK, {"CallSid": fields["CallSid"], "Digits": ["1"]})
    twice = request(WEBHOOK, urlencode(fields, doseq=True).encode(), dict(once.headers))
    assert wire.verify(twice, TOKEN)
    assert wire.replay_key(twice) == wire.replay_key(once)


# -- parsing the samples -------------------------------------------------------------------------


def _parse(name: str, url: str = WEBHOOK) -> WebhookEvent:
    req = request(url, sample(f"twilio/{name}.form"))
    return wire.parse(req)


def test_inbound_call_is_a_twiml_fetch() -> None:
    event = _parse("inbound_call")
    assert event == WebhookEvent(
        kind=WebhookKind.RINGING,
        provider_call_id="CA11111111111111111111111111111111",
        call_id=CALL_ID,
        direction=Direction.INBOUND,
        from_number="+14155550100",
        to="+14155550199",
        wants_instructions=True,
    )


@pytest.mark.parametrize(
    ("name", "kind", "reason", "sequence"),
    [
        ("status_initiated", WebhookKind.INITIATED, None, 0),
        ("status_ringing", WebhookKind.RINGING, None, 1),
        ("status_answered", WebhookKind.ANSWERED, None, 2),
        ("status_completed", WebhookKind.ENDED, EndReason.COMPLETED, 3),
        ("status_busy", WebhookKind.ENDED, EndReason.BUSY, 2),
        ("status_no_answer", WebhookKind.ENDED, EndReason.NO_ANSWER, 2),
    ],
)
def test_status_callbacks(
    name: str, kind: WebhookKind, reason: EndReason | None, sequence: int
) -> None:
    event = _parse(name)
    assert (event.kind, event.end_reason, event.sequence) == (kind, reason, sequence)
    assert event.direction is Direction.OUTBOUND_API
    assert not event.wants_instructions


@pytest.mark.parametrize(
    ("status", "reason"), [("failed", EndReason.FAILED), ("canceled", EndReason.CANCELED)]
)
def test_other_terminal_statuses_keep_their_reason(status: str, reason: EndReason) -> None:
    body = sample("twilio/status_busy.form").replace(
        b"CallStatus=busy", f"CallStatus={status}".encode()
    )
    assert wire.parse(request(WEBHOOK, body)).end_reason is reason


def test_outbound_twiml_fetch() -> None:
    event = _parse("twiml_fetch_outbound")
    assert (event.kind, event.wants_instructions, event.direction) == (
        WebhookKind.ANSWERED,
        True,
        Direction.OUTBOUND_API,
    )


def test_async_amd_callback_says_machine_and_wants_nothing() -> None:
    event = _parse("amd_async_machine")
    assert (event.kind, event.machine, event.wants_instructions) == (
        WebhookKind.MACHINE,
        True,
        False,
    )


def test_sync_amd_human_is_an_ordinary_answer() -> None:
    event = _parse("twiml_fetch_amd_human")
    assert (event.kind, event.machine, event.wants_instructions) == (
        WebhookKind.ANSWERED,
        False,
        True,
    )


@pytest.mark.parametrize(
    "answered_by", ["machine_start", "machine_end_silence", "machine_end_other", "fax"]
)
def test_sync_amd_machine_is_a_machine_event(answered_by: str) -> None:
    body = sample("twilio/twiml_fetch_amd_human.form").replace(
        b"AnsweredBy=human", f"AnsweredBy={answered_by}".encode()
    )
    event = wire.parse(request(WEBHOOK, body))
    assert (event.kind, event.machine, event.wants_instructions) == (
        WebhookKind.MACHINE,
        True,
        True,
    )


def test_digits_are_dtmf() -> None:
    event = wire.parse(
        request(WEBHOOK, b"CallSid=CA" + b"a" * 32 + b"&CallStatus=in-progress&Digits=12%23")
    )
    assert (event.kind, event.digits) == (WebhookKind.DTMF, "12#")


def test_empty_digits_are_no_digits() -> None:
    # a <Gather> that timed out (actionOnEmptyResult) posts an empty Digits
    event = wire.parse(
        request(WEBHOOK, b"CallSid=CA" + b"a" * 32 + b"&CallStatus=in-progress&Digits=")
    )
    assert (event.kind, event.digits) == (WebhookKind.ANSWERED, "")


@pytest.mark.parametrize("digits", ["1x", "hangup", "%D9%A1", "1+2"])
def test_digits_that_are_not_dtmf_are_malformed(digits: str) -> None:
    body = f"CallSid=CA{'a' * 32}&CallStatus=in-progress&Digits={digits}".encode()
    with pytest.raises(MalformedWebhook, match="Digits"):
        wire.parse(request(WEBHOOK, body))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inbound", Direction.INBOUND),
        ("outbound-api", Direction.OUTBOUND_API),
        ("outbound-dial", Direction.OUTBOUND_API),
        ("trunking-originating", Direction.OUTBOUND_API),
        ("sideways", None),
    ],
)
def test_directions(value: str, expected: Direction | None) -> None:
    body = f"CallSid=CA{'b' * 32}&CallStatus=ringing&Direction={value}".encode()
    assert wire.parse(request(WEBHOOK, body)).direction is expected


def test_get_webhooks_read_the_query() -> None:
    url = f"{WEBHOOK}&CallSid=CA{'c' * 32}&CallStatus=ringing&Direction=inbound"
    event = wire.parse(request(url, method="GET"))
    assert (event.provider_call_id, event.call_id, event.kind) == (
        "CA" + "c" * 32,
        CALL_ID,
        WebhookKind.RINGING,
    )


def test_unknown_status_is_other() -> None:
    event = wire.parse(
        request(WEBHOOK, b"CallSid=CA" + b"d" * 32 + b"&CallStatus=teleported&CallbackSource=x")
    )
    assert event.kind is WebhookKind.OTHER


@pytest.mark.parametrize(
    "body",
    [
        b"CallStatus=ringing",
        b"CallSid=XX11111111111111111111111111111111",
        b"CallSid=CA" + b"1" * 32 + b"&SequenceNumber=-1",
        b"CallSid=CA" + b"1" * 32 + b"&From=%zz",
        b"CallSid=CA" + b"1" * 32 + b"&From=%ff",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        wire.parse(request(WEBHOOK, body))


def test_a_json_body_is_not_a_voice_webhook() -> None:
    with pytest.raises(MalformedWebhook):
        wire.parse(request(f"{BASE}&bodySHA256={BODY_HASH}", JSON_BODY.encode()))


@given(
    url=st.text(max_size=60),
    body=st.binary(max_size=200),
    method=st.sampled_from(["GET", "POST", "x"]),
)
def test_parse_raises_only_malformed_for_any_bytes(url: str, body: bytes, method: str) -> None:
    try:
        event = wire.parse(request(url, body, method=method))
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)


twilioish = st.dictionaries(
    st.sampled_from(
        [
            "CallSid",
            "CallStatus",
            "AnsweredBy",
            "Digits",
            "Direction",
            "From",
            "To",
            "SequenceNumber",
            "CallbackSource",
            "bodySHA256",
        ]
    ),
    st.lists(
        st.one_of(
            st.text(max_size=40), st.sampled_from(["CA" + "e" * 32, "ringing", "completed", "7"])
        ),
        min_size=1,
        max_size=2,
    ),
)


@given(fields=twilioish)
def test_verified_but_malformed_payloads_raise_only_malformed(fields: dict[str, list[str]]) -> None:
    req = signed(WEBHOOK, fields)
    assert wire.verify(req, TOKEN)
    try:
        event = wire.parse(req)
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)
    assert set(event.digits) <= set("0123456789*#ABCD"), "only DTMF becomes DTMF events"


# -- answers -------------------------------------------------------------------------------------


def test_ack_is_an_empty_response() -> None:
    answer = wire.reply(None, Instructions(Reply.ACK), MEDIA)
    assert (answer.status, answer.content_type) == (200, "text/xml; charset=utf-8")
    assert xml_tree(answer.body) == xml_tree(str(VoiceResponse()))


def test_stream_answer_matches_the_sdk() -> None:
    answer = wire.reply(
        None, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token='t0k&<"n'), MEDIA
    )
    expected = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=MEDIA)
    stream.parameter(name="token", value='t0k&<"n')
    stream.parameter(name="call", value=CALL_ID)
    expected.append(connect)
    assert xml_tree(answer.body) == xml_tree(str(expected))


@pytest.mark.parametrize(
    "text", ["Goodbye", "Tom & Jerry <3 \"quoted\" 'single'", "Grüße, 你好 🎉"]
)
def test_say_and_hangup_matches_the_sdk(text: str) -> None:
    answer = wire.reply(None, Instructions(Reply.SAY_AND_HANGUP, text=text), MEDIA)
    expected = VoiceResponse()
    expected.say(text)
    expected.hangup()
    assert xml_tree(answer.body) == xml_tree(str(expected))


def test_control_characters_cannot_break_the_document() -> None:
    answer = wire.reply(None, Instructions(Reply.SAY_AND_HANGUP, text="a\x00b\x1bc\ud800d"), MEDIA)
    assert xml_tree(answer.body)[3][0][2] == "abcd"


def test_hangup_and_reject_match_the_sdk() -> None:
    hangup = VoiceResponse()
    hangup.hangup()
    reject = VoiceResponse()
    reject.reject(reason="rejected")
    assert xml_tree(wire.reply(None, Instructions(Reply.HANGUP), MEDIA).body) == xml_tree(
        str(hangup)
    )
    assert xml_tree(wire.reply(None, Instructions(Reply.REJECT), MEDIA).body) == xml_tree(
        str(reject)
    )


def test_stream_after_a_verb_matches_the_sdk() -> None:
    say = ET.Element("Say")
    say.text = "One moment & thanks"
    answer = wire.stream_after(say, CALL_ID, "t0k3n", MEDIA)
    expected = VoiceResponse()
    expected.say("One moment & thanks")
    connect = Connect()
    stream = connect.stream(url=MEDIA)
    stream.parameter(name="token", value="t0k3n")
    stream.parameter(name="call", value=CALL_ID)
    expected.append(connect)
    assert xml_tree(answer.body) == xml_tree(str(expected))
    streamed = wire.reply(
        None, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token="t0k3n"), MEDIA
    )
    assert xml_tree(answer.body)[3][1] == xml_tree(streamed.body)[3][0]


def test_stream_answer_refuses_programming_errors() -> None:
    with pytest.raises(ValueError, match="token"):
        wire.reply(None, Instructions(Reply.STREAM, call_id=CALL_ID), MEDIA)
    with pytest.raises(ValueError, match="query"):
        wire.reply(None, Instructions(Reply.STREAM, stream_token="t"), MEDIA + "?call=x")


# -- REST helpers --------------------------------------------------------------------------------


def test_call_ids() -> None:
    assert wire.is_call_id("CA" + "0123456789abcdef" * 2)
    for bad in ("CA123", "CA" + "g" * 32, "../CA" + "1" * 32, "CA" + "1" * 32 + "/x", ""):
        assert not wire.is_call_id(bad)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("queued", CarrierStatus(live=True, answered=False)),
        ("initiated", CarrierStatus(live=True, answered=False)),
        ("ringing", CarrierStatus(live=True, answered=False, ringing=True)),
        ("in-progress", CarrierStatus(live=True, answered=True)),
        ("completed", CarrierStatus(live=False, end_reason=EndReason.COMPLETED)),
        ("busy", CarrierStatus(live=False, end_reason=EndReason.BUSY)),
        ("failed", CarrierStatus(live=False, end_reason=EndReason.FAILED)),
        ("no-answer", CarrierStatus(live=False, end_reason=EndReason.NO_ANSWER)),
        ("canceled", CarrierStatus(live=False, end_reason=EndReason.CANCELED)),
    ],
)
def test_rest_status(status: str, expected: CarrierStatus) -> None:
    assert wire.rest_status(status) == expected
    assert wire.end_reason(status) == expected.end_reason


def test_rest_status_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="unknown"):
        wire.rest_status("teleported")


def test_the_body_hash_is_sha256_hex() -> None:
    assert hashlib.sha256(JSON_BODY.encode()).hexdigest() == BODY_HASH
