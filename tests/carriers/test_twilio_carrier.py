"""TwilioCarrier against the fake Twilio over real HTTP; the official SDK (its requests captured
offline) is the oracle for paths, methods, auth and bodies."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import CarrierError, CarrierStatus, Instructions, Reply
from voicecalld.carriers.forms import parse_form
from voicecalld.carriers.twilio import wire
from voicecalld.carriers.twilio.carrier import STATUS_EVENTS, TwilioCarrier
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import FakeCarriers
from voicecalld.sim.state import SimStatus

from .helpers import CALL_ID, request, xml_tree
from .rest_support import (
    CALLS,
    URLS,
    Captured,
    CapturingAdapter,
    fake_carriers,
    make_call,
    only,
    ours,
)

WEBHOOK = f"https://voice.example.com/base/webhooks/twilio?call={CALL_ID}"
MEDIA = "wss://voice.example.com/base/media/twilio"
UNKNOWN_SID = "CA" + "f" * 32


def carrier(sim: FakeCarriers, client: httpx.AsyncClient) -> TwilioCarrier:
    return TwilioCarrier(sim.twilio_config(), URLS, client, CALLS)


def sdk(
    sim: FakeCarriers, status: int = 200, answer: Any = None
) -> tuple[Client, CapturingAdapter]:
    adapter = CapturingAdapter(status, answer if answer is not None else {"sid": UNKNOWN_SID})
    http = TwilioHttpClient()
    assert http.session is not None
    http.session.mount("https://", adapter)
    accounts = sim.accounts
    return Client(
        accounts.twilio_account_sid, accounts.twilio_auth_token, http_client=http
    ), adapter


def same_request(sdk_request: Captured, our_request: Captured) -> None:
    assert sdk_request.method == our_request.method
    assert sdk_request.path == our_request.path
    assert sdk_request.authorization == our_request.authorization
    assert parse_form(sdk_request.body) == parse_form(our_request.body)


def twilio_call(sid: str | None, **options: Any) -> Call:
    return make_call("twilio", sid, **options)


# -- place ----------------------------------------------------------------------------------------


async def test_place_dials_with_callbacks_events_and_limits(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sid = await carrier(sim, client).place(twilio_call(None))
    simulated = sim.call(sid)
    assert wire.is_call_id(sid)
    assert (simulated.to, simulated.from_number) == ("+14155550199", "+14155550100")
    assert simulated.answer_url == simulated.status_callback == WEBHOOK
    assert simulated.call_id == CALL_ID
    assert simulated.status_events == STATUS_EVENTS
    assert (simulated.ring_timeout, simulated.time_limit) == (26, 600)  # 25.5 s rounded up
    form = only(sim.requests_to(Endpoint.TWILIO_CREATE)).form
    assert form["Method"] == form["StatusCallbackMethod"] == ["POST"]


async def test_place_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        await carrier(sim, client).place(twilio_call(None))
    twilio, adapter = sdk(sim, 201)
    twilio.calls.create(
        to="+14155550199",
        from_="+14155550100",
        url=WEBHOOK,
        method="POST",
        status_callback=WEBHOOK,
        status_callback_method="POST",
        status_callback_event=list(STATUS_EVENTS),
        timeout=26,
        time_limit=600,
    )
    same_request(only(adapter.captured), ours(only(sim.requests_to(Endpoint.TWILIO_CREATE))))


@pytest.mark.parametrize(
    "fault",
    [Fault(status=503, after=True), Fault(drop=True, after=True), Fault(delay=60, after=True)],
)
async def test_an_ambiguous_create_is_not_retried(fault: Fault, autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_CREATE, fault)
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).place(twilio_call(None))
    assert raised.value.retryable is True
    assert len(sim.requests_to(Endpoint.TWILIO_CREATE)) == 1
    assert len(sim.calls) == 1  # exactly one call exists at the carrier


async def test_a_refused_create_is_final(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(
            Endpoint.TWILIO_CREATE, Fault(status=400, body={"code": 21211, "message": "bad To"})
        )
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).place(twilio_call(None))
    assert (raised.value.retryable, raised.value.status) == (False, 400)
    assert "21211" in str(raised.value)


async def test_a_create_answer_without_a_call_sid_is_an_error(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_CREATE, Fault(status=201, body={"sid": "../../x"}))
        with pytest.raises(CarrierError, match="without a Call SID"):
            await carrier(sim, client).place(twilio_call(None))


# -- hangup ---------------------------------------------------------------------------------------


async def test_hangup_of_an_answered_call_completes_it(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        await carrier(sim, client).hangup(twilio_call(simulated.carrier_id, answered=True))
    assert simulated.status is SimStatus.COMPLETED
    assert only(sim.requests_to(Endpoint.TWILIO_UPDATE)).form == {"Status": ["completed"]}


async def test_hangup_of_an_unanswered_call_cancels_it(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.RINGING)
        await carrier(sim, client).hangup(twilio_call(simulated.carrier_id))
    assert simulated.status is SimStatus.CANCELED
    assert only(sim.requests_to(Endpoint.TWILIO_UPDATE)).form == {"Status": ["canceled"]}


async def test_hangup_of_a_call_answered_meanwhile_completes_it(autojump_clock: MockClock) -> None:
    """Twilio ignores ``canceled`` on a call in progress: the answer says so, and we insist."""
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        await carrier(sim, client).hangup(twilio_call(simulated.carrier_id))
    assert simulated.status is SimStatus.COMPLETED
    sent = [r.form["Status"] for r in sim.requests_to(Endpoint.TWILIO_UPDATE)]
    assert sent == [["canceled"], ["completed"]]


@pytest.mark.parametrize("answered", [True, False])
async def test_hangup_of_a_call_that_is_gone_succeeds(
    answered: bool, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        ended = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.COMPLETED)
        twilio = carrier(sim, client)
        await twilio.hangup(twilio_call(UNKNOWN_SID, answered=answered))  # 404, code 20404
        await twilio.hangup(twilio_call(ended.carrier_id, answered=answered))  # 400, code 21220
    assert [r.endpoint for r in sim.requests] == [Endpoint.TWILIO_UPDATE] * 2


async def test_hangup_is_retried_because_it_is_idempotent(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        sim.arm(Endpoint.TWILIO_UPDATE, Fault(status=503, after=True))
        await carrier(sim, client).hangup(twilio_call(simulated.carrier_id, answered=True))
    assert simulated.status is SimStatus.COMPLETED
    assert len(sim.requests_to(Endpoint.TWILIO_UPDATE)) == 2


async def test_hangup_without_a_carrier_id_sends_nothing(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        await carrier(sim, client).hangup(twilio_call(None))
    assert sim.requests == []


async def test_hangup_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        await carrier(sim, client).hangup(twilio_call(simulated.carrier_id, answered=True))
    twilio, adapter = sdk(sim)
    twilio.calls(simulated.carrier_id).update(status="completed")
    same_request(only(adapter.captured), ours(only(sim.requests_to(Endpoint.TWILIO_UPDATE))))


# -- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (SimStatus.QUEUED, CarrierStatus(live=True, answered=False)),
        (SimStatus.RINGING, CarrierStatus(live=True, answered=False, ringing=True)),
        (SimStatus.IN_PROGRESS, CarrierStatus(live=True, answered=True)),
        (SimStatus.COMPLETED, CarrierStatus(live=False, end_reason=EndReason.COMPLETED)),
        (SimStatus.BUSY, CarrierStatus(live=False, end_reason=EndReason.BUSY)),
        (SimStatus.NO_ANSWER, CarrierStatus(live=False, end_reason=EndReason.NO_ANSWER)),
        (SimStatus.FAILED, CarrierStatus(live=False, end_reason=EndReason.FAILED)),
        (SimStatus.CANCELED, CarrierStatus(live=False, end_reason=EndReason.CANCELED)),
    ],
)
async def test_status_maps_every_twilio_status(
    status: SimStatus, expected: CarrierStatus, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", direction="outbound")
        sim.set_status(simulated.carrier_id, status)
        assert await carrier(sim, client).status(twilio_call(simulated.carrier_id)) == expected


async def test_status_of_an_unknown_call_is_ended_completed(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        status = await carrier(sim, client).status(twilio_call(UNKNOWN_SID))
    assert status == CarrierStatus(live=False, end_reason=EndReason.COMPLETED)


async def test_status_without_a_carrier_id_is_lost_and_asks_nothing(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        status = await carrier(sim, client).status(twilio_call(None))
    assert status == CarrierStatus(live=False, end_reason=EndReason.LOST)
    assert sim.requests == []


async def test_status_errors_are_retryable_after_bounded_retries(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_FETCH, Fault(status=500, times=None))
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).status(twilio_call(UNKNOWN_SID))
    assert (raised.value.retryable, raised.value.status) == (True, 500)
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 3


async def test_an_undocumented_status_is_a_retryable_error(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(
            Endpoint.TWILIO_FETCH, Fault(status=200, body={"sid": UNKNOWN_SID, "status": "odd"})
        )
        with pytest.raises(CarrierError, match="odd") as raised:
            await carrier(sim, client).status(twilio_call(UNKNOWN_SID))
    assert raised.value.retryable is True


async def test_status_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2")
        await carrier(sim, client).status(twilio_call(simulated.carrier_id))
    twilio, adapter = sdk(sim)
    twilio.calls(simulated.carrier_id).fetch()
    mine, theirs = ours(only(sim.requests_to(Endpoint.TWILIO_FETCH))), only(adapter.captured)
    assert (theirs.method, theirs.path, theirs.authorization, theirs.body) == (
        mine.method,
        mine.path,
        mine.authorization,
        mine.body,
    )


# -- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sid", ["CA123", "../Calls", "CA" + "0" * 32 + "/../x", "ca" + "0" * 32, "CA" + "g" * 32, ""]
)
async def test_a_call_sid_is_checked_before_it_enters_a_path(
    sid: str, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        twilio = carrier(sim, client)
        answered = twilio_call(sid, answered=True)
        for attempt in (
            twilio.hangup(answered),
            twilio.status(answered),
            twilio.speak(answered, "hi", "token"),
        ):
            with pytest.raises(CarrierError) as raised:
                await attempt
            assert raised.value.retryable is False
    assert sim.requests == []


async def test_the_account_sid_is_checked_before_it_enters_a_path(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        config = sim.twilio_config()
        twilio = TwilioCarrier(
            type(config)(
                enabled=True, account_sid="AC1/../x", auth_token="t", api_base_url=sim.base_url
            ),
            URLS,
            client,
            CALLS,
        )
        with pytest.raises(CarrierError, match="account_sid") as raised:
            await twilio.place(twilio_call(None))
    assert raised.value.retryable is False
    assert sim.requests == []


# -- speak and DTMF -------------------------------------------------------------------------------


def stream_answer(token: str) -> ET.Element:
    """The STREAM webhook answer's ``<Connect>``: what a new TwiML must reconnect to."""
    streamed = wire.reply(
        None, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token=token), MEDIA
    )
    return ET.fromstring(streamed.body)[0]


async def test_speak_says_then_reconnects_the_stream_with_the_fresh_token(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        call = twilio_call(simulated.carrier_id, answered=True)
        await carrier(sim, client).speak(call, "Hello <there> & welcome", "fresh-token")
    ((name, fields),) = simulated.actions
    document = ET.fromstring(fields["Twiml"])
    assert name == "twiml"
    assert [child.tag for child in document] == ["Say", "Connect"]
    assert document[0].text == "Hello <there> & welcome"
    assert xml_tree(ET.tostring(document[1])) == xml_tree(ET.tostring(stream_answer("fresh-token")))


async def test_send_dtmf_plays_digits_then_reconnects_the_stream(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        call = twilio_call(simulated.carrier_id, answered=True)
        await carrier(sim, client).send_dtmf(call, "12w#*", "tok2")
    document = ET.fromstring(simulated.actions[0][1]["Twiml"])
    assert document[0].tag == "Play"
    assert document[0].attrib == {"digits": "12w#*"}
    assert xml_tree(ET.tostring(document[1])) == xml_tree(ET.tostring(stream_answer("tok2")))


async def test_speak_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        await carrier(sim, client).speak(twilio_call(simulated.carrier_id), "Hi", "tok")
    mine = ours(only(sim.requests_to(Endpoint.TWILIO_UPDATE)))
    twilio, adapter = sdk(sim)
    twilio.calls(simulated.carrier_id).update(twiml=parse_form(mine.body)["Twiml"][0])
    same_request(only(adapter.captured), mine)


async def test_speak_is_not_retried(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        sim.arm(Endpoint.TWILIO_UPDATE, Fault(status=502, after=True))
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).speak(twilio_call(simulated.carrier_id), "Hi", "tok")
    assert raised.value.retryable is True
    assert len(simulated.actions) == 1


@pytest.mark.parametrize("status", [SimStatus.RINGING, SimStatus.COMPLETED])
async def test_speak_on_a_call_not_in_progress_is_refused(
    status: SimStatus, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=status)
        with pytest.raises(CarrierError, match="not in progress") as raised:
            await carrier(sim, client).speak(twilio_call(simulated.carrier_id), "Hi", "tok")
    assert raised.value.retryable is False


async def test_speak_checks_what_it_can_before_sending(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        twilio = carrier(sim, client)
        call = twilio_call(UNKNOWN_SID, answered=True)
        with pytest.raises(CarrierError, match="4000"):
            await twilio.speak(call, "x" * 4000, "tok")
        with pytest.raises(CarrierError, match="token"):
            await twilio.speak(call, "hi", None)
        with pytest.raises(CarrierError, match="not reached"):
            await twilio.speak(twilio_call(None), "hi", "tok")
        with pytest.raises(CarrierError, match="DTMF"):
            await twilio.send_dtmf(call, "12x", "tok")
    assert sim.requests == []


# -- the rest of the protocol ---------------------------------------------------------------------


async def test_instruct_is_a_no_op_and_the_webhook_half_is_the_wire_module(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        twilio = carrier(sim, client)
        await twilio.instruct(twilio_call(UNKNOWN_SID), Instructions(Reply.HANGUP))
        assert sim.requests == []
        token = sim.accounts.twilio_auth_token
        body = b"CallSid=" + UNKNOWN_SID.encode() + b"&CallStatus=ringing&Direction=inbound"
        signature = wire.signature(
            token,
            WEBHOOK,
            {"CallSid": UNKNOWN_SID, "CallStatus": "ringing", "Direction": "inbound"},
        )
        signed = request(WEBHOOK, body, {wire.SIGNATURE_HEADER: signature})
        assert twilio.has_signature(signed.headers)
        assert twilio.verify(signed)
        assert twilio.replay_key(signed) == wire.replay_key(signed)
        event = twilio.parse(signed)
        assert (event.provider_call_id, event.call_id, event.direction) == (
            UNKNOWN_SID,
            CALL_ID,
            Direction.INBOUND,
        )
        answer = twilio.reply(event, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token="t"))
        assert f'url="{MEDIA}"' in answer.body.decode()
        assert twilio.instructs_by_rest is False
        assert twilio.webhook_methods == frozenset({"POST"})


async def test_a_hangup_in_flight_can_be_cancelled(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("twilio", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        sim.arm(Endpoint.TWILIO_UPDATE, Fault(delay=3.0))
        with trio.move_on_after(1.0) as scope:
            await carrier(sim, client).hangup(twilio_call(simulated.carrier_id, answered=True))
    assert scope.cancelled_caught
