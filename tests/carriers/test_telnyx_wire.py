"""Telnyx webhooks: PyNaCl and telnyx.lib.webhook_verification are the oracles."""

from __future__ import annotations

import base64
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

from voicecalld.calls.model import Direction, EndReason
from voicecalld.carriers.base import (
    CarrierStatus,
    Instructions,
    MalformedWebhook,
    Reply,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.telnyx import wire

from .helpers import CALL_ID, request, sample

SEED = bytes(range(32))
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
PUBLIC = base64.b64decode(PUBLIC_B64)
# Made by OpenSSL 3.0 from the same seed (`openssl pkey -pubout`), an encoder independent of ours.
DER_B64 = "MCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
PEM = f"-----BEGIN PUBLIC KEY-----\n{DER_B64}\n-----END PUBLIC KEY-----\n"
TS = 1_767_225_600
VECTOR_BODY = (
    b'{"data":{"event_type":"call.hangup","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",'
    b'"occurred_at":"2026-01-01T00:00:00.000000Z","payload":{"call_control_id":"v3:abc",'
    b'"hangup_cause":"normal_clearing"},"record_type":"event"},"meta":{"attempt":1,'
    b'"delivered_to":"https://voice.example.com/telnyx/webhook"}}'
)
VECTOR_SIG = (
    "xbna95FWtB5sAcsUqpQoVdYJjffClikjkJpX4EYTPyW1PJjG3nz7ktzvz3S+UEyr75Cwozfkk9myY4axijvSBQ=="
)
WEBHOOK = "https://voice.example.com/webhooks/telnyx"


def signed(
    body: bytes, *, ts: int | str = TS, now: float = TS, sig: str | None = None
) -> WebhookRequest:
    headers = {
        wire.SIGNATURE_HEADER: wire.sign(SEED, ts, body) if sig is None else sig,
        wire.TIMESTAMP_HEADER: str(ts),
    }
    return request(WEBHOOK, body, headers, received_at=now)


def sdk_accepts(body: bytes, headers: dict[str, str], now: float, key: str = PUBLIC_B64) -> bool:
    with mock.patch("time.time", return_value=now):
        try:
            verify_webhook_signature(body, headers, key)
        except WebhookVerificationError:
            return False
    return True


# -- the fixed vector (carriers.md §3.1) ---------------------------------------------------------


def test_vector_signature() -> None:
    assert wire.sign(SEED, TS, VECTOR_BODY) == VECTOR_SIG
    assert wire.sign(SigningKey(SEED), str(TS), VECTOR_BODY) == VECTOR_SIG


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (0, True),
        (10, True),
        (300, True),
        (300.9, True),
        (-300, True),
        (301, False),
        (-301, False),
        (86400, False),
    ],
)
def test_the_window_is_300_seconds_inclusive_both_ways(offset: float, accepted: bool) -> None:
    req = signed(VECTOR_BODY, sig=VECTOR_SIG, now=TS + offset)
    assert wire.verify(req, PUBLIC) is accepted
    assert sdk_accepts(VECTOR_BODY, dict(req.headers), TS + offset) is accepted


def test_a_tampered_body_is_refused() -> None:
    body = VECTOR_BODY.replace(b"normal_clearing", b"user_busy")
    req = signed(body, sig=VECTOR_SIG)
    assert not wire.verify(req, PUBLIC)
    assert not sdk_accepts(body, dict(req.headers), TS)


def test_fail_closed_without_a_key() -> None:
    req = signed(VECTOR_BODY)
    assert wire.verify(req, PUBLIC)
    assert not wire.verify(req, b"")
    assert not wire.verify(req, PUBLIC[:31])
    assert not wire.verify(req, SigningKey.generate().verify_key.encode())


def test_headers_are_both_required() -> None:
    assert wire.has_signature({wire.SIGNATURE_HEADER: "x", wire.TIMESTAMP_HEADER: "1"})
    assert not wire.has_signature({wire.SIGNATURE_HEADER: "x"})
    assert not wire.has_signature({wire.TIMESTAMP_HEADER: "1"})
    assert not wire.verify(
        request(WEBHOOK, VECTOR_BODY, {wire.SIGNATURE_HEADER: VECTOR_SIG}, received_at=TS), PUBLIC
    )


@pytest.mark.parametrize(
    "ts", [f" {TS}", f"+{TS}", "1_767_225_600", f"{TS} ", "", "abc", "١٧٦٧٢٢٥٦٠٠", "9" * 40]
)
def test_timestamps_must_be_plain_ascii_digits(ts: str) -> None:
    """``int()`` takes several of these (the SDK does); a signed-but-odd timestamp is refused."""
    body = VECTOR_BODY
    sig = base64.b64encode(SigningKey(SEED).sign(ts.encode() + b"|" + body).signature).decode()
    req = request(
        WEBHOOK, body, {wire.SIGNATURE_HEADER: sig, wire.TIMESTAMP_HEADER: ts}, received_at=TS
    )
    assert not wire.verify(req, PUBLIC)


def test_the_sdk_would_take_a_padded_timestamp() -> None:
    ts = f" {TS}"
    sig = base64.b64encode(
        SigningKey(SEED).sign(ts.encode() + b"|" + VECTOR_BODY).signature
    ).decode()
    assert sdk_accepts(VECTOR_BODY, {wire.SIGNATURE_HEADER: sig, wire.TIMESTAMP_HEADER: ts}, TS)


@pytest.mark.parametrize("received_at", [float("nan"), float("inf"), float("-inf")])
def test_an_impossible_clock_is_refused(received_at: float) -> None:
    assert not wire.verify(signed(VECTOR_BODY, now=received_at), PUBLIC)


def test_base64url_and_unpadded_signatures() -> None:
    urlsafe = VECTOR_SIG.replace("+", "-").replace("/", "_")
    for spelling in (urlsafe, urlsafe.rstrip("="), VECTOR_SIG.rstrip("=")):
        req = signed(VECTOR_BODY, sig=spelling)
        assert wire.verify(req, PUBLIC)
        assert wire.replay_key(req) == wire.replay_key(signed(VECTOR_BODY, sig=VECTOR_SIG))


@given(
    body=st.text(max_size=200).map(str.encode),
    offset=st.integers(-400, 400),
    tamper=st.sampled_from(["none", "body", "signature", "key"]),
)
def test_verify_agrees_with_the_sdk(body: bytes, offset: int, tamper: str) -> None:
    other = SigningKey.generate()
    sig = wire.sign(other if tamper == "key" else SEED, TS, body)
    if tamper == "signature":
        raw = bytearray(base64.b64decode(sig))
        raw[0] ^= 1
        sig = base64.b64encode(raw).decode()
    sent = body + b" " if tamper == "body" else body
    req = signed(sent, sig=sig, now=TS + offset)
    assert wire.verify(req, PUBLIC) is sdk_accepts(sent, dict(req.headers), TS + offset)


@given(
    body=st.binary(max_size=100),
    sig=st.text(max_size=100),
    ts=st.text(max_size=20),
    now=st.floats(),
)
def test_verify_never_raises(body: bytes, sig: str, ts: str, now: float) -> None:
    req = request(
        WEBHOOK, body, {wire.SIGNATURE_HEADER: sig, wire.TIMESTAMP_HEADER: ts}, received_at=now
    )
    assert wire.verify(req, PUBLIC) is False
    assert len(wire.replay_key(req)) == 64


# -- public keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [PUBLIC_B64, f"  {PUBLIC_B64}\n", DER_B64, PEM, PEM.replace("\n", "\r\n")]
)
def test_public_key_forms(text: str) -> None:
    assert wire.load_public_key(text) == PUBLIC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("not base64!", "not base64"),
        (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
        (base64.b64encode(b"\x30" * 44).decode(), "44 bytes"),
        ("-----BEGIN PUBLIC KEY-----\nMCow\n", "BEGIN and END"),
    ],
)
def test_bad_public_keys_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire.load_public_key(text)


# -- replay keys ---------------------------------------------------------------------------------


def test_replay_key_is_the_event_id_across_redeliveries() -> None:
    one = signed(VECTOR_BODY)
    assert wire.replay_key(one) == wire.replay_key(signed(VECTOR_BODY))
    # a redelivery: the same event, a new timestamp and signature (and meta.attempt)
    redelivered = VECTOR_BODY.replace(b'"attempt":1', b'"attempt":2')
    assert redelivered != VECTOR_BODY
    assert wire.replay_key(one) == wire.replay_key(signed(redelivered, ts=TS + 1, now=TS))
    other_event = VECTOR_BODY.replace(b"0ccc7b54", b"1ccc7b54")
    assert wire.replay_key(one) != wire.replay_key(signed(other_event))
    assert len(wire.replay_key(one)) == 64


def test_replay_key_without_an_event_id_covers_timestamp_signature_and_body() -> None:
    body = b'{"data": {"event_type": "call.hangup"}}'
    one = signed(body)
    assert wire.replay_key(one) == wire.replay_key(signed(body))
    assert wire.replay_key(one) != wire.replay_key(signed(body + b" "))
    assert wire.replay_key(one) != wire.replay_key(signed(body, ts=TS + 1, now=TS))


# -- client_state --------------------------------------------------------------------------------


def test_client_state_round_trip() -> None:
    assert wire.decode_client_state(wire.encode_client_state(CALL_ID)) == wire.ClientState(CALL_ID)
    both = wire.encode_client_state(CALL_ID, "t0k3n")
    assert wire.decode_client_state(both) == wire.ClientState(CALL_ID, "t0k3n")
    assert base64.b64decode(wire.encode_client_state(CALL_ID)) == f"call={CALL_ID}".encode()


@pytest.mark.parametrize(
    "state",
    [
        None,
        "",
        7,
        "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "!!!",
        base64.b64encode(b"call=../x").decode(),
        "/w==",
    ],
)
def test_someone_elses_client_state_is_no_call_id(state: object) -> None:
    assert wire.decode_client_state(state).call_id is None


# -- parsing the samples -------------------------------------------------------------------------


def _parse(name: str) -> WebhookEvent:
    return wire.parse(signed(sample(f"telnyx/{name}.json")))


def test_inbound_call_initiated() -> None:
    assert _parse("call_initiated") == WebhookEvent(
        kind=WebhookKind.INITIATED,
        provider_call_id="v3:XEPI2_Nk8h6e00-7oqhC96vnzrpZHp_2gcqbOG5gVrtr13QjnLouzg",
        direction=Direction.INBOUND,
        from_number="+15418556816",
        to="+12568349765",
    )


def test_answered_carries_our_call_id_in_client_state() -> None:
    event = _parse("call_answered")
    assert (event.kind, event.call_id, event.wants_instructions) == (
        WebhookKind.ANSWERED,
        CALL_ID,
        False,
    )


def test_hangups_keep_their_real_reason() -> None:
    rejected = _parse("call_hangup")
    assert (rejected.kind, rejected.end_reason, rejected.call_id) == (
        WebhookKind.ENDED,
        EndReason.BUSY,
        None,
    )
    normal = _parse("call_hangup_normal")
    assert (normal.end_reason, normal.call_id) == (EndReason.COMPLETED, CALL_ID)


def test_dtmf_and_machine_detection() -> None:
    dtmf = _parse("call_dtmf_received")
    assert (dtmf.kind, dtmf.digits) == (WebhookKind.DTMF, "#")
    machine = _parse("call_machine_detection_ended")
    assert (machine.kind, machine.machine, machine.call_id) == (WebhookKind.MACHINE, True, CALL_ID)


def test_other_events_are_other() -> None:
    event = _parse("streaming_failed")
    assert (event.kind, event.provider_call_id) == (
        WebhookKind.OTHER,
        "31f19208-5db0-11ec-9ea7-02420a0d3a69",
    )


def _event(event_type: str, **payload: Any) -> bytes:
    fields = {"call_control_id": "v3:abc", **payload}
    return orjson.dumps({"data": {"event_type": event_type, "id": "x", "payload": fields}})


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        ("normal_clearing", EndReason.COMPLETED),
        ("user_busy", EndReason.BUSY),
        ("call_rejected", EndReason.BUSY),
        ("no_answer", EndReason.NO_ANSWER),
        ("timeout", EndReason.NO_ANSWER),
        ("originator_cancel", EndReason.CANCELED),
        ("not_found", EndReason.FAILED),
        ("time_limit", EndReason.TIMEOUT),
        ("machine_detected", EndReason.VOICEMAIL),
        ("unspecified", EndReason.COMPLETED),
        ("something_new", EndReason.COMPLETED),
    ],
)
def test_hangup_causes(cause: str, reason: EndReason) -> None:
    assert wire.parse(signed(_event("call.hangup", hangup_cause=cause))).end_reason is reason
    assert wire.end_reason(cause) is reason


def test_a_hangup_without_cause_is_completed() -> None:
    assert wire.parse(signed(_event("call.hangup"))).end_reason is EndReason.COMPLETED


@pytest.mark.parametrize(
    ("event_type", "result", "machine"),
    [
        ("call.machine.detection.ended", "human", False),
        ("call.machine.detection.ended", "not_sure", False),
        ("call.machine.premium.detection.ended", "machine", True),
        ("call.machine.premium.detection.ended", "fax_detected", True),
        ("call.machine.premium.detection.ended", "human_business", False),
    ],
)
def test_machine_results(event_type: str, result: str, machine: bool) -> None:
    event = wire.parse(signed(_event(event_type, result=result)))
    assert (event.kind, event.machine) == (WebhookKind.MACHINE, machine)


def test_speak_ended_is_spoken() -> None:
    event = _parse("call_speak_ended")
    assert (event.kind, event.call_id) == (WebhookKind.SPOKEN, CALL_ID)
    assert wire.parse(signed(_event("call.speak.started"))).kind is WebhookKind.OTHER


def test_outgoing_is_outbound_api() -> None:
    assert (
        wire.parse(signed(_event("call.initiated", direction="outgoing"))).direction
        is Direction.OUTBOUND_API
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"data":{}}',
        b'{"data":{"event_type":"call.hangup","payload":{}}}',
        _event("call.hangup", call_control_id="../etc"),
        _event("call.dtmf.received", digit="xx"),
        _event("call.dtmf.received"),
        orjson.dumps({"data": {"event_type": 1, "payload": {"call_control_id": "v3:abc"}}}),
        b'{"data":{"event_type":"call.answered","payload":{"call_control_id":"v3:abc","direction":[]}}}',
    ],
)
def test_malformed_payloads(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        wire.parse(signed(body))


@given(body=st.binary(max_size=300))
def test_parse_raises_only_malformed_for_any_bytes(body: bytes) -> None:
    try:
        event = wire.parse(signed(body))
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "v3:abc",
            "call.hangup",
            "call.dtmf.received",
            "call.machine.detection.ended",
            "machine",
            "1",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "payload",
                    "event_type",
                    "call_control_id",
                    "digit",
                    "result",
                    "hangup_cause",
                    "client_state",
                    "direction",
                    "from",
                    "to",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(document=json_values)
def test_verified_but_malformed_json_raises_only_malformed(document: object) -> None:
    req = signed(orjson.dumps(document))
    assert wire.verify(req, PUBLIC)
    try:
        event = wire.parse(req)
    except MalformedWebhook:
        return
    assert wire.is_call_id(event.provider_call_id)


# -- answers and REST helpers --------------------------------------------------------------------


@pytest.mark.parametrize("reply", list(Reply))
def test_the_answer_is_always_an_empty_200(reply: Reply) -> None:
    answer = wire.reply(
        None, Instructions(reply, call_id=CALL_ID, stream_token="t"), "wss://x/media/telnyx"
    )
    assert (answer.status, answer.body) == (200, b"")


def test_call_ids() -> None:
    for good in (
        "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "v2:abc_-9",
        "31f19208-5db0-11ec-9ea7-02420a0d3a69",
    ):
        assert wire.is_call_id(good)
    for bad in ("", "v3:", "v1:abc", "v3:a/b", "v3:a?b", "v3:a b", "../v3:abc", "v3:" + "a" * 501):
        assert not wire.is_call_id(bad)


def test_rest_status() -> None:
    assert wire.rest_status({"is_alive": True}) == CarrierStatus(live=True)
    assert wire.rest_status({"is_alive": False}) == CarrierStatus(
        live=False, end_reason=EndReason.COMPLETED
    )
    for bad in ({}, {"is_alive": "true"}, {"is_alive": None}):
        with pytest.raises(ValueError, match="is_alive"):
            wire.rest_status(bad)
