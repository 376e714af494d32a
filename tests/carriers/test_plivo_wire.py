"""Plivo callbacks: plivo.utils (V3, V2) and plivo.plivoxml are the oracles."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from plivo import plivoxml
from plivo.utils import validate_signature, validate_v3_signature

from voicecalld.calls.model import Direction, EndReason, new_call_id
from voicecalld.carriers.base import (
    CarrierStatus,
    Instructions,
    MalformedWebhook,
    Reply,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.plivo import wire
from voicecalld.sim.dialect import Stream
from voicecalld.sim.plivo_voice import read_plivo_xml

from .helpers import CALL_ID, hostnames, multi_fields, paths, request, sample, xml_tree

TOKEN = "MY_AUTH_TOKEN"
NONCE = "12345678901234567890"
ANSWER = "https://voice.example.com/plivo/answer?flow=answer&callId=abc"
VECTOR = {
    "CallUUID": "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a",
    "From": "14155550100",
    "To": "14155550199",
    "Direction": "inbound",
    "CallStatus": "ringing",
    "Event": "StartApp",
}
WEBHOOK = f"https://voice.example.com/webhooks/plivo?call={CALL_ID}"
MEDIA = "wss://voice.example.com/media/plivo"
UUID = "5607532d-5037-4066-befc-a8b40218dd4f"


def v3_request(
    url: str,
    fields: dict[str, str] | dict[str, list[str]],
    *,
    method: str = "POST",
    nonce: str = NONCE,
) -> WebhookRequest:
    body = b"" if method == "GET" else urlencode(fields, doseq=True).encode()
    sig = wire.signature_v3(TOKEN, method, url, fields, nonce)
    return request(url, body, {wire.V3: sig, wire.V3_NONCE: nonce}, method=method)


# -- the SDK's fixed vectors (carriers.md §2.1) -------------------------------------------------


def test_v3_vectors() -> None:
    assert (
        wire.signature_v3(TOKEN, "POST", ANSWER, VECTOR, NONCE)
        == "5em/aaxHtOH0v9R6gbD+zsL5QpbPgAjZR42h+pxrwDU="
    )
    no_query = "https://voice.example.com/plivo/answer"
    assert (
        wire.signature_v3(TOKEN, "POST", no_query, VECTOR, NONCE)
        == "ktAWquS0Iop0KZnrmalxIHxp7JjTB0UdNzKuCNBuxZc="
    )
    for url, sig in [
        (ANSWER, "5em/aaxHtOH0v9R6gbD+zsL5QpbPgAjZR42h+pxrwDU="),
        (no_query, "ktAWquS0Iop0KZnrmalxIHxp7JjTB0UdNzKuCNBuxZc="),
    ]:
        assert validate_v3_signature("POST", url, NONCE, TOKEN, sig, dict(VECTOR))
        assert wire.verify(
            request(url, urlencode(VECTOR).encode(), {wire.V3: sig, wire.V3_NONCE: NONCE}), TOKEN
        )


def test_v3_post_with_a_query_and_no_params_has_no_trailing_dot() -> None:
    sig = wire.signature_v3(TOKEN, "POST", ANSWER, {}, NONCE)
    assert validate_v3_signature("POST", ANSWER, NONCE, TOKEN, sig, {})
    assert wire.verify(request(ANSWER, b"", {wire.V3: sig, wire.V3_NONCE: NONCE}), TOKEN)


def test_v2_vector_ignores_the_query() -> None:
    expected = "pdiTHHzow9LzpRIHNRtuNX3vH+8Ck4N2a3jd9TqZ/NI="
    assert wire.signature_v2(TOKEN, ANSWER, NONCE) == expected
    assert validate_signature(ANSWER, NONCE, expected, TOKEN)
    req = request(ANSWER, urlencode(VECTOR).encode(), {wire.V2: expected, wire.V2_NONCE: NONCE})
    assert wire.verify(req, TOKEN)


def test_several_signatures_in_one_header() -> None:
    sig = "5em/aaxHtOH0v9R6gbD+zsL5QpbPgAjZR42h+pxrwDU="
    header = f"AAAA,{sig}"
    assert validate_v3_signature("POST", ANSWER, NONCE, TOKEN, header, dict(VECTOR))
    assert wire.verify(
        request(ANSWER, urlencode(VECTOR).encode(), {wire.V3: header, wire.V3_NONCE: NONCE}), TOKEN
    )
    assert wire.verify(
        request(
            ANSWER, urlencode(VECTOR).encode(), {wire.V3: f"AAAA, {sig} ", wire.V3_NONCE: NONCE}
        ),
        TOKEN,
    )


def test_the_main_account_header_is_accepted() -> None:
    sig = wire.signature_v3(TOKEN, "POST", ANSWER, VECTOR, NONCE)
    headers = {wire.MA_V3: sig, wire.V3_NONCE: NONCE, wire.V3: "bm90IGl0"}
    assert wire.has_signature(headers)
    assert wire.verify(request(ANSWER, urlencode(VECTOR).encode(), headers), TOKEN)


def test_v2_is_not_a_fallback_for_a_failed_v3() -> None:
    """A captured request's body rewritten: V3 fails, its V2 still holds. Refused."""
    forged = {**VECTOR, "CallStatus": "completed"}
    headers = {
        wire.V3: wire.signature_v3(TOKEN, "POST", ANSWER, VECTOR, NONCE),
        wire.V3_NONCE: NONCE,
        wire.V2: wire.signature_v2(TOKEN, ANSWER, NONCE),
        wire.V2_NONCE: NONCE,
    }
    assert wire.verify(request(ANSWER, urlencode(VECTOR).encode(), headers), TOKEN)
    assert not wire.verify(request(ANSWER, urlencode(forged).encode(), headers), TOKEN)


def test_fail_closed() -> None:
    req = v3_request(WEBHOOK, VECTOR)
    assert wire.verify(req, TOKEN)
    assert not wire.verify(req, "")
    assert not wire.verify(req, "other")
    assert not wire.has_signature({})
    assert not wire.has_signature({wire.V3: "x"})  # no nonce
    assert not wire.verify(request(WEBHOOK, req.body, {wire.V3: req.headers[wire.V3]}), TOKEN)
    assert not wire.verify(
        request(WEBHOOK, req.body, {wire.V3: req.headers[wire.V3], wire.V3_NONCE: ""}), TOKEN
    )


# -- properties against the SDK ------------------------------------------------------------------

query_values = st.text(st.characters(max_codepoint=127), max_size=8).map(
    lambda text: quote(text, safe="")
)
plivo_queries = st.lists(
    st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True), query_values), max_size=4
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
urls = st.builds(
    lambda scheme, host, port, path, query: (
        f"{scheme}://{host}{port}{path or '/'}{'?' + query if query else ''}"
    ),
    st.sampled_from(["http", "https"]),
    hostnames,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    paths,
    plivo_queries,
)
nonces = st.from_regex(r"[0-9A-Za-z]{1,24}", fullmatch=True)


@given(url=urls, fields=multi_fields, nonce=nonces)
def test_post_signatures_agree_with_the_sdk(
    url: str, fields: dict[str, list[str]], nonce: str
) -> None:
    sig = wire.signature_v3(TOKEN, "POST", url, fields, nonce)
    assert validate_v3_signature(
        "POST", url, nonce, TOKEN, sig, {k: list(v) for k, v in fields.items()}
    )
    assert wire.verify(v3_request(url, fields, nonce=nonce), TOKEN)


def test_non_ascii_queries_are_utf8_where_the_python_sdk_cannot_read_them() -> None:
    """plivo-python's parse_qs on bytes raises on a non-ASCII query; plivo-node decodes UTF-8."""
    url = "https://voice.example.com/w?name=Gr%C3%BC%C3%9Fe"
    sig = wire.signature_v3(TOKEN, "POST", url, {}, NONCE)
    assert sig == wire.signature_v3(
        TOKEN, "POST", "https://voice.example.com/w?name=Grüße", {}, NONCE
    )
    with pytest.raises(UnicodeError):
        validate_v3_signature("POST", url, NONCE, TOKEN, sig, {})
    assert wire.verify(request(url, b"", {wire.V3: sig, wire.V3_NONCE: NONCE}), TOKEN)


@given(url=urls, nonce=nonces)
def test_get_signatures_agree_with_the_sdk(url: str, nonce: str) -> None:
    sig = wire.signature_v3(TOKEN, "GET", url, {}, nonce)
    assert validate_v3_signature("GET", url, nonce, TOKEN, sig, {})
    assert wire.verify(v3_request(url, {}, method="GET", nonce=nonce), TOKEN)


@given(
    url=urls, fields=multi_fields, other=multi_fields, nonce=nonces, garbage=st.text(max_size=50)
)
def test_verify_rejects_what_the_sdk_rejects(
    url: str, fields: dict[str, list[str]], other: dict[str, list[str]], nonce: str, garbage: str
) -> None:
    assume(
        sorted((k, sorted(v)) for k, v in other.items())
        != sorted((k, sorted(v)) for k, v in fields.items())
    )
    wrong = wire.signature_v3(TOKEN, "POST", url, other, nonce)
    body = urlencode(fields, doseq=True).encode()
    for candidate in (wrong, garbage.replace(",", "")):
        sdk = validate_v3_signature(
            "POST", url, nonce, TOKEN, candidate, {k: list(v) for k, v in fields.items()}
        )
        ours = wire.verify(request(url, body, {wire.V3: candidate, wire.V3_NONCE: nonce}), TOKEN)
        assert ours is sdk is False


@given(url=urls, nonce=nonces)
def test_v2_agrees_with_the_sdk(url: str, nonce: str) -> None:
    sig = wire.signature_v2(TOKEN, url, nonce)
    assert validate_signature(url, nonce, sig, TOKEN)
    assert wire.verify(request(url, b"a=1", {wire.V2: sig, wire.V2_NONCE: nonce}), TOKEN)


@given(
    url=st.text(max_size=60),
    body=st.binary(max_size=80),
    sig=st.text(max_size=50),
    nonce=st.text(max_size=10),
)
def test_verify_never_raises(url: str, body: bytes, sig: str, nonce: str) -> None:
    for headers in ({wire.V3: sig, wire.V3_NONCE: nonce}, {wire.V2: sig, wire.V2_NONCE: nonce}):
        req = request(url, body, headers)
        assert wire.verify(req, TOKEN) is False
        assert len(wire.replay_key(req)) == 64


# -- replay keys ---------------------------------------------------------------------------------


def test_replay_key_survives_reordered_query_params() -> None:
    first = v3_request("https://voice.example.com/w?a=1&b=2", VECTOR)
    reordered = "https://voice.example.com/w?b=2&a=1"
    second = request(reordered, first.body, dict(first.headers))
    assert wire.verify(second, TOKEN)
    assert wire.replay_key(second) == wire.replay_key(first)
    assert len(wire.replay_key(first)) == 64


def test_replay_key_changes_with_the_nonce() -> None:
    assert wire.replay_key(v3_request(WEBHOOK, VECTOR)) != wire.replay_key(
        v3_request(WEBHOOK, VECTOR, nonce="other")
    )


def test_v2_replay_key_ignores_the_unsigned_body() -> None:
    headers = {wire.V2: wire.signature_v2(TOKEN, WEBHOOK, NONCE), wire.V2_NONCE: NONCE}
    one = request(WEBHOOK, b"CallStatus=ringing", headers)
    other = request(WEBHOOK, b"CallStatus=completed", headers)
    assert wire.replay_key(one) == wire.replay_key(other)


# -- parsing the samples -------------------------------------------------------------------------


def _parse(name: str, url: str = WEBHOOK) -> WebhookEvent:
    return wire.parse(request(url, sample(f"plivo/{name}.form")))


def test_inbound_answer_url() -> None:
    assert _parse("answer_inbound") == WebhookEvent(
        kind=WebhookKind.RINGING,
        provider_call_id="d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a",
        call_id=CALL_ID,
        direction=Direction.INBOUND,
        from_number="+14155550100",
        to="+14155550199",
        wants_instructions=True,
    )


def test_outbound_answer_url() -> None:
    event = _parse("answer_outbound")
    assert (event.kind, event.wants_instructions, event.direction) == (
        WebhookKind.ANSWERED,
        True,
        Direction.OUTBOUND_API,
    )
    assert event.request_id == "9834029e-58b6-11e1-b8b7-a5bd0e4e126f"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("hangup_outbound", EndReason.COMPLETED),
        ("hangup_busy", EndReason.BUSY),
        ("hangup_timeout", EndReason.NO_ANSWER),
    ],
)
def test_hangups_keep_their_real_reason(name: str, reason: EndReason) -> None:
    event = _parse(name)
    assert (event.kind, event.end_reason, event.wants_instructions) == (
        WebhookKind.ENDED,
        reason,
        False,
    )
    assert event.provider_call_id == UUID


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("no-answer", EndReason.NO_ANSWER),
        ("failed", EndReason.FAILED),
        ("cancel", EndReason.CANCELED),
    ],
)
def test_other_terminal_statuses(status: str, reason: EndReason) -> None:
    body = sample("plivo/hangup_timeout.form").replace(
        b"CallStatus=timeout", f"CallStatus={status}".encode()
    )
    assert wire.parse(request(WEBHOOK, body)).end_reason is reason


def test_ring_url_is_ringing_and_wants_nothing() -> None:
    event = _parse("ring_outbound")
    assert (event.kind, event.wants_instructions) == (WebhookKind.RINGING, False)


def test_a_ring_without_event_for_an_outbound_call_wants_nothing() -> None:
    body = f"CallUUID={UUID}&Direction=outbound&CallStatus=ringing".encode()
    assert not wire.parse(request(WEBHOOK, body)).wants_instructions
    inbound = f"CallUUID={UUID}&Direction=inbound&CallStatus=ringing".encode()
    assert wire.parse(request(WEBHOOK, inbound)).wants_instructions


def test_machine_detection() -> None:
    event = _parse("machine_detection")
    assert (event.kind, event.machine, event.wants_instructions) == (
        WebhookKind.MACHINE,
        True,
        False,
    )
    human = sample("plivo/machine_detection.form").replace(b"Machine=true", b"Machine=false")
    assert not wire.parse(request(WEBHOOK, human)).machine


def test_get_callbacks_read_the_query() -> None:
    url = f"{WEBHOOK}&CallUUID={UUID}&CallStatus=in-progress&Event=StartApp&Direction=outbound"
    event = wire.parse(request(url, method="GET"))
    assert (event.kind, event.call_id, event.wants_instructions) == (
        WebhookKind.ANSWERED,
        CALL_ID,
        True,
    )


def test_digits_are_dtmf_and_empty_digits_are_none() -> None:
    pressed = wire.parse(
        request(WEBHOOK, f"CallUUID={UUID}&CallStatus=in-progress&Digits=12%23a".encode())
    )
    assert (pressed.kind, pressed.digits) == (WebhookKind.DTMF, "12#A")
    # <GetDigits> that timed out: an empty Digits is no digits, not a malformed callback
    timed_out = f"CallUUID={UUID}&CallStatus=in-progress&Digits=".encode()
    event = wire.parse(request(WEBHOOK, timed_out))
    assert (event.kind, event.digits) == (WebhookKind.ANSWERED, "")


@pytest.mark.parametrize(
    "body",
    [
        b"CallStatus=ringing",
        f"CallUUID={UUID}&Digits=1x".encode(),
        f"CallUUID={UUID}&Digits=%D9%A1".encode(),
        b"CallUUID=not-a-uuid",
        f"CallUUID={UUID}&RequestUUID=x".encode(),
        f"CallUUID={UUID}&To=%G0".encode(),
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        wire.parse(request(WEBHOOK, body))


@given(
    url=st.text(max_size=60), body=st.binary(max_size=200), method=st.sampled_from(["GET", "POST"])
)
def test_parse_raises_only_malformed_for_any_bytes(url: str, body: bytes, method: str) -> None:
    try:
        event = wire.parse(request(url, body, method=method))
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)


plivoish = st.dictionaries(
    st.sampled_from(
        ["CallUUID", "RequestUUID", "CallStatus", "Event", "Direction", "Digits", "Machine", "From"]
    ),
    st.lists(
        st.one_of(
            st.text(max_size=40), st.sampled_from([UUID, "ringing", "StartApp", "MachineDetection"])
        ),
        min_size=1,
        max_size=2,
    ),
)


@given(fields=plivoish)
def test_verified_but_malformed_payloads_raise_only_malformed(fields: dict[str, list[str]]) -> None:
    req = v3_request(WEBHOOK, fields)
    assert wire.verify(req, TOKEN)
    try:
        event = wire.parse(req)
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)
    assert set(event.digits) <= set("0123456789*#ABCD"), "only DTMF becomes DTMF events"


# -- answers -------------------------------------------------------------------------------------


def _plivo(*elements: object) -> str:
    response = plivoxml.ResponseElement()
    for element in elements:
        response.add(element)
    return str(response.to_string())


def test_stream_answer_matches_plivoxml() -> None:
    answer = wire.reply(
        None, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token="t0k3n"), MEDIA
    )
    expected = plivoxml.StreamElement(
        MEDIA,
        bidirectional=True,
        keepCallAlive=True,
        audioTrack="inbound",
        contentType="audio/x-mulaw;rate=8000",
        extraHeaders="token=t0k3n",
    )
    assert (answer.status, answer.content_type) == (200, "text/xml; charset=utf-8")
    assert xml_tree(answer.body) == xml_tree(_plivo(expected))


@pytest.mark.parametrize("text", ["Goodbye", 'Tom & Jerry <3 "quoted"', "Grüße 🎉"])
def test_speak_and_hangup_matches_plivoxml(text: str) -> None:
    answer = wire.reply(None, Instructions(Reply.SAY_AND_HANGUP, text=text), MEDIA)
    assert xml_tree(answer.body) == xml_tree(
        _plivo(plivoxml.SpeakElement(text), plivoxml.HangupElement())
    )


def test_hangup_reject_and_ack_match_plivoxml() -> None:
    assert xml_tree(wire.reply(None, Instructions(Reply.HANGUP), MEDIA).body) == xml_tree(
        _plivo(plivoxml.HangupElement())
    )
    assert xml_tree(wire.reply(None, Instructions(Reply.REJECT), MEDIA).body) == xml_tree(
        _plivo(plivoxml.HangupElement(reason="rejected"))
    )
    assert xml_tree(wire.reply(None, Instructions(Reply.ACK), MEDIA).body) == xml_tree(_plivo())


def test_stream_answer_refuses_what_extra_headers_cannot_carry() -> None:
    with pytest.raises(ValueError, match="token"):
        wire.reply(None, Instructions(Reply.STREAM, call_id=CALL_ID), MEDIA)
    for token in ("a,b=c", "t_k", "t-k"):
        with pytest.raises(ValueError, match="extraHeaders"):
            wire.reply(None, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token=token), MEDIA)


def test_the_simulated_plivo_runs_our_stream_answer_for_a_real_call_id() -> None:
    # a call id is c_<hex>: Plivo refuses "_" in extraHeaders, so it must not travel there
    answer = wire.reply(
        None, Instructions(Reply.STREAM, call_id=new_call_id(), stream_token="ab12" * 8), MEDIA
    )
    ((stream),) = read_plivo_xml(answer.body)
    assert isinstance(stream, Stream)
    assert stream.order.extra_headers == "token=" + "ab12" * 8


@pytest.mark.parametrize(
    "headers",
    [f"token=t0k3n,call={CALL_ID}", "token=t-k", "to ken=x", "token=x,", "token", "k=" + "v" * 511],
)
def test_the_simulated_plivo_refuses_extra_headers_plivo_refuses(headers: str) -> None:
    # carriers.md §2.3: k=v pairs, alphanumeric, at most 512 bytes
    document = _plivo(plivoxml.StreamElement(MEDIA, extraHeaders=headers))
    with pytest.raises(ValueError, match="extraHeaders"):
        read_plivo_xml(document.encode())


# -- REST helpers --------------------------------------------------------------------------------


def test_call_ids() -> None:
    assert wire.is_call_id(UUID)
    for bad in ("", UUID + "/", "../" + UUID, UUID.replace("-", ""), "z" * 36):
        assert not wire.is_call_id(bad)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"call_status": "in-progress"}, CarrierStatus(live=True, answered=True)),
        ({"call_status": "ringing"}, CarrierStatus(live=True, answered=False, ringing=True)),
        ({"call_status": "queued"}, CarrierStatus(live=True, answered=False)),
        ({"call_status": "busy"}, CarrierStatus(live=False, end_reason=EndReason.BUSY)),
    ],
)
def test_live_status(record: dict[str, object], expected: CarrierStatus) -> None:
    assert wire.live_status(record) == expected


def test_live_status_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="unknown"):
        wire.live_status({"call_status": 3})


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4000, EndReason.COMPLETED),
        ("4010", EndReason.COMPLETED),
        (1000, EndReason.CANCELED),
        (2000, EndReason.FAILED),
        (3000, EndReason.NO_ANSWER),
        (3010, EndReason.BUSY),
        (3020, EndReason.BUSY),
        (8011, EndReason.FAILED),
        (0, EndReason.COMPLETED),
        (None, EndReason.COMPLETED),
        ("junk", EndReason.COMPLETED),
        (True, EndReason.COMPLETED),
    ],
)
def test_cdr_reasons(code: object, reason: EndReason) -> None:
    assert wire.cdr_status({"hangup_cause_code": code}) == CarrierStatus(
        live=False, end_reason=reason
    )
    assert wire.cdr_end_reason({"hangup_cause_code": code}) is reason


def test_end_reason() -> None:
    assert wire.end_reason("timeout") is EndReason.NO_ANSWER
    assert wire.end_reason("in-progress") is None
