"""Every signature the simulator makes is accepted by the carrier's own SDK validator.

The SDKs are the independent oracle: the simulator must be a faithful stand-in for the carriers,
not one that merely agrees with voicecalld's verifiers. Bodies are decoded here with the
standard library, as a web framework in front of the SDK would. Forgeries (the simulator's
fault injection) must be refused by the same validators.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from plivo.utils import validate_signature as plivo_v2_valid
from plivo.utils.signature_v3 import validate_v3_signature
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature
from twilio.request_validator import RequestValidator

from voicecalld.sim.dialect import Context, Delivery, Dialect, Happening, StreamOrder
from voicecalld.sim.plivo_voice import PlivoVoice
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id
from voicecalld.sim.telnyx_voice import TelnyxVoice
from voicecalld.sim.twilio_voice import TwilioVoice

ACCOUNTS = SimAccounts()
FORGER = SimAccounts()
HAPPENINGS = list(Happening)

numbers = st.one_of(
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.text(min_size=1, max_size=20),  # whatever a caller id may hold, non-ASCII included
)
webhook_urls = st.builds(
    lambda host, port, call_id: (
        f"{'https' if port is None else 'http'}://{host}{'' if port is None else f':{port}'}"
        f"/voice/webhooks/x{'' if call_id is None else f'?call={call_id}'}"
    ),
    st.sampled_from(["voice.example.com", "127.0.0.1", "localhost"]),
    st.one_of(st.none(), st.integers(1, 65535)),
    st.one_of(st.none(), st.from_regex(r"c_[0-9a-f]{24}", fullmatch=True)),
)


def a_call(carrier: str, direction: str, url: str, from_number: str, to: str) -> SimCall:
    call = SimCall(
        carrier=carrier,
        carrier_id=new_carrier_id(carrier),
        from_number=from_number,
        to=to,
        direction=direction,
        answer_url=url,
        ring_url=url,
        status_callback=url,
        status_events=("initiated", "ringing", "answered", "completed"),
        request_id=new_carrier_id("plivo")
        if carrier == "plivo" and direction != "inbound"
        else None,
        client_state="Y2FsbD1jXzE=",
    )
    call.set_status(SimStatus.IN_PROGRESS)
    return call


def deliveries(dialect: Dialect, call: SimCall, accounts: SimAccounts) -> list[Delivery]:
    made = []
    for happening in HAPPENINGS:
        if happening is Happening.ENDED:
            call.set_status(SimStatus.COMPLETED)
        context = Context(now=time.time(), sequence=3, duration=12, digit="5", stream_id="S1")
        for webhook in dialect.webhooks(call, happening, context):
            made.append(dialect.sign(webhook, accounts, time.time()))
    return made


def header(delivery: Delivery, name: str) -> str:
    return dict(delivery.headers)[name]


def twilio_valid(delivery: Delivery, token: str) -> bool:
    params = dict(parse_qsl(delivery.body.decode(), keep_blank_values=True))
    signature = header(delivery, "x-twilio-signature")
    return bool(RequestValidator(token).validate(delivery.webhook.url, params, signature))


def plivo_valid(delivery: Delivery, token: str) -> bool:
    params = parse_qs(delivery.body.decode(), keep_blank_values=True)
    v3 = validate_v3_signature(
        "POST",
        delivery.webhook.url,
        header(delivery, "x-plivo-signature-v3-nonce"),
        token,
        header(delivery, "x-plivo-signature-v3"),
        params,
    )
    ma_v3 = validate_v3_signature(
        "POST",
        delivery.webhook.url,
        header(delivery, "x-plivo-signature-v3-nonce"),
        token,
        header(delivery, "x-plivo-signature-ma-v3"),
        params,
    )
    v2 = plivo_v2_valid(
        delivery.webhook.url,
        header(delivery, "x-plivo-signature-v2-nonce"),
        header(delivery, "x-plivo-signature-v2"),
        token,
    )
    return bool(v3 and ma_v3 and v2)


def telnyx_valid(delivery: Delivery, public_key: str) -> bool:
    try:
        verify_webhook_signature(delivery.body, dict(delivery.headers), public_key)
    except WebhookVerificationError:
        return False
    return True


CASES: list[tuple[Dialect, Callable[[Delivery, SimAccounts], bool]]] = [
    (TwilioVoice(ACCOUNTS), lambda d, a: twilio_valid(d, a.twilio_auth_token)),
    (PlivoVoice(ACCOUNTS), lambda d, a: plivo_valid(d, a.plivo_auth_token)),
    (TelnyxVoice(ACCOUNTS), lambda d, a: telnyx_valid(d, a.telnyx_public_key)),
]


@pytest.mark.parametrize(("dialect", "valid"), CASES, ids=["twilio", "plivo", "telnyx"])
@given(
    direction=st.sampled_from(["inbound", "outbound"]),
    url=webhook_urls,
    from_number=numbers,
    to=numbers,
)
def test_the_sdk_accepts_every_webhook_the_simulator_signs(
    dialect: Dialect,
    valid: Callable[[Delivery, SimAccounts], bool],
    direction: str,
    url: str,
    from_number: str,
    to: str,
) -> None:
    call = a_call(dialect.name, direction, url, from_number, to)
    made = deliveries(dialect, call, ACCOUNTS)
    assert made, "every carrier says something about a call"
    for delivery in made:
        assert valid(delivery, ACCOUNTS), delivery.webhook.label


@pytest.mark.parametrize(("dialect", "valid"), CASES, ids=["twilio", "plivo", "telnyx"])
def test_the_sdk_refuses_what_the_simulator_forges(
    dialect: Dialect, valid: Callable[[Delivery, SimAccounts], bool]
) -> None:
    call = a_call(dialect.name, "outbound", "https://voice.example.com/webhooks/x", "+1", "+2")
    forged = deliveries(dialect, call, FORGER)
    assert forged
    for delivery in forged:
        assert not valid(delivery, ACCOUNTS), delivery.webhook.label


@pytest.mark.parametrize(("dialect", "valid"), CASES, ids=["twilio", "plivo", "telnyx"])
def test_a_redelivery_is_signed_afresh_and_still_valid(
    dialect: Dialect, valid: Callable[[Delivery, SimAccounts], bool]
) -> None:
    call = a_call(dialect.name, "outbound", "https://voice.example.com/webhooks/x", "+1", "+2")
    call.set_status(SimStatus.BUSY)
    (webhook,) = dialect.webhooks(call, Happening.ENDED, Context(now=time.time(), duration=3))
    again = dialect.sign(dialect.redelivery(webhook, 2), ACCOUNTS, time.time())
    assert valid(again, ACCOUNTS)


def test_a_telnyx_redelivery_is_the_same_event_on_its_next_attempt() -> None:
    dialect = TelnyxVoice(ACCOUNTS)
    call = a_call("telnyx", "outbound", "https://voice.example.com/webhooks/telnyx", "+1", "+2")
    (webhook,) = dialect.webhooks(call, Happening.ANSWERED, Context(now=time.time()))
    again = dialect.redelivery(webhook, 2)
    first, second = (_json(w.json) for w in (webhook, again))
    assert first["data"] == second["data"], "the same event: the same data.id"
    assert (first["meta"]["attempt"], second["meta"]["attempt"]) == (1, 2)


def test_twilio_signs_the_media_stream_upgrade_over_its_url() -> None:
    order = StreamOrder("wss://voice.example.com/media/twilio")
    ((name, signature),) = TwilioVoice(ACCOUNTS).upgrade_headers(order, ACCOUNTS)
    assert name == "x-twilio-signature"
    validator = RequestValidator(ACCOUNTS.twilio_auth_token)
    assert validator.validate("wss://voice.example.com/media/twilio", {}, signature)


def _json(data: bytes) -> Any:
    return orjson.loads(data)
