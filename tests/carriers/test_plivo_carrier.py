"""PlivoCarrier against the fake Plivo over real HTTP; the official SDK (its requests captured
offline) is the oracle for paths, methods, auth and bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import plivo
import pytest
from trio.testing import MockClock

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import CarrierError, CarrierStatus, Instructions, Reply
from voicecalld.carriers.plivo import wire
from voicecalld.carriers.plivo.carrier import PlivoCarrier, plivo_ids
from voicecalld.config import PlivoConfig
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import FakeCarriers
from voicecalld.sim.state import SimCall, SimStatus

from .helpers import CALL_ID, request
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

WEBHOOK = f"https://voice.example.com/base/webhooks/plivo?call={CALL_ID}"
UNKNOWN = "5607532d-5037-4066-befc-a8b40218dd4f"


def carrier(sim: FakeCarriers, client: httpx.AsyncClient) -> PlivoCarrier:
    return PlivoCarrier(sim.plivo_config(), URLS, client, CALLS)


def sdk(sim: FakeCarriers, status: int, answer: Any) -> tuple[Any, CapturingAdapter]:
    adapter = CapturingAdapter(status, answer)
    client = plivo.RestClient(sim.accounts.plivo_auth_id, sim.accounts.plivo_auth_token)
    client.session.mount("https://", adapter)
    return client, adapter


def same_request(theirs: Captured, mine: Captured) -> None:
    assert (theirs.method, theirs.path, theirs.query, theirs.authorization) == (
        mine.method,
        mine.path,
        mine.query,
        mine.authorization,
    )
    assert theirs.json == mine.json


def placed(sim: FakeCarriers, status: SimStatus = SimStatus.QUEUED) -> SimCall:
    """A call voicecalld placed: the simulator knows its CallUUID and its request UUID."""
    simulated = sim.add_call("plivo", from_number="+1", to="+2", direction="outbound")
    simulated.set_status(status)
    return simulated


def learned(simulated: SimCall, *, answered: bool = False) -> Call:
    """Our record once a webhook taught us the CallUUID (the request UUID kept beside it)."""
    metadata = {"request_id": simulated.request_id}
    return make_call("plivo", simulated.carrier_id, answered=answered, metadata=metadata)


def request_only(simulated: SimCall) -> Call:
    """Our record before any webhook: only the request UUID that placing the call returned."""
    assert simulated.request_id is not None
    return make_call("plivo", simulated.request_id)


# -- ids ------------------------------------------------------------------------------------------


def test_which_id_plays_which_role() -> None:
    request_id, call_uuid = UNKNOWN, "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a"
    assert plivo_ids(make_call("plivo", request_id)) == (request_id, request_id)
    assert plivo_ids(make_call("plivo", call_uuid, metadata={"request_id": request_id})) == (
        call_uuid,
        request_id,
    )
    inbound = make_call("plivo", call_uuid, direction=Direction.INBOUND)
    assert plivo_ids(inbound) == (call_uuid, None)
    assert plivo_ids(make_call("plivo", None)) == (None, None)


@pytest.mark.parametrize(
    "uuid", ["abc", "../Call", UNKNOWN + "/../x", UNKNOWN.replace("-", ""), ""]
)
async def test_a_uuid_is_checked_before_it_enters_a_path(
    uuid: str, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        plivo_carrier = carrier(sim, client)
        call = make_call("plivo", uuid, answered=True, direction=Direction.INBOUND)
        for attempt in (
            plivo_carrier.hangup(call),
            plivo_carrier.status(call),
            plivo_carrier.speak(call, "hi", None),
            plivo_carrier.send_dtmf(call, "1", None),
        ):
            with pytest.raises(CarrierError) as raised:
                await attempt
            assert raised.value.retryable is False
    assert sim.requests == []


async def test_the_auth_id_is_checked_before_it_enters_a_path(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        config = PlivoConfig(
            enabled=True, auth_id="MA/../x", auth_token="t", api_base_url=sim.base_url
        )
        with pytest.raises(CarrierError, match="auth_id"):
            await PlivoCarrier(config, URLS, client, CALLS).place(make_call("plivo", None))
    assert sim.requests == []


# -- place ----------------------------------------------------------------------------------------


async def test_place_returns_the_request_uuid(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        request_uuid = await carrier(sim, client).place(make_call("plivo", None))
    (simulated,) = sim.calls.values()
    assert request_uuid == simulated.request_id != simulated.carrier_id
    assert simulated.answer_url == simulated.ring_url == simulated.status_callback == WEBHOOK
    assert simulated.call_id == CALL_ID
    assert (simulated.ring_timeout, simulated.time_limit) == (26, 600)


async def test_place_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        await carrier(sim, client).place(make_call("plivo", None))
    mine = ours(only(sim.requests_to(Endpoint.PLIVO_CREATE)))
    client_, adapter = sdk(sim, 201, {"request_uuid": UNKNOWN, "message": "call fired"})
    client_.calls.create(
        from_="+14155550100",
        to_="+14155550199",
        answer_url=WEBHOOK,
        answer_method="POST",
        ring_url=WEBHOOK,
        ring_method="POST",
        hangup_url=WEBHOOK,
        hangup_method="POST",
        ring_timeout=26,
        time_limit=600,
    )
    theirs = only(adapter.captured)
    assert (theirs.method, theirs.path, theirs.authorization) == (
        mine.method,
        mine.path,
        mine.authorization,
    )
    # the SDK adds its own defaults (fallback_method, machine_detection_time, ...); ours agree
    assert mine.json.items() <= theirs.json.items()


@pytest.mark.parametrize("fault", [Fault(status=500, after=True), Fault(drop=True, after=True)])
async def test_an_ambiguous_create_is_not_retried(fault: Fault, autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.PLIVO_CREATE, fault)
        with pytest.raises(CarrierError):
            await carrier(sim, client).place(make_call("plivo", None))
    assert len(sim.requests_to(Endpoint.PLIVO_CREATE)) == 1
    assert len(sim.calls) == 1


async def test_a_bulk_shaped_answer_with_one_request_uuid_is_read(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.PLIVO_CREATE, Fault(status=201, body={"request_uuid": [UNKNOWN]}))
        assert await carrier(sim, client).place(make_call("plivo", None)) == UNKNOWN
        sim.arm(Endpoint.PLIVO_CREATE, Fault(status=201, body={"request_uuid": [UNKNOWN] * 2}))
        with pytest.raises(CarrierError, match="request_uuid"):
            await carrier(sim, client).place(make_call("plivo", None))


# -- hangup ---------------------------------------------------------------------------------------


async def test_an_unanswered_call_known_by_its_request_is_canceled(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim)
        await carrier(sim, client).hangup(request_only(simulated))
    assert simulated.status is SimStatus.CANCELED
    assert [r.endpoint for r in sim.requests] == [Endpoint.PLIVO_CANCEL]


async def test_an_answered_call_is_hung_up_by_its_call_uuid(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        await carrier(sim, client).hangup(learned(simulated, answered=True))
    assert simulated.status is SimStatus.COMPLETED
    assert [r.endpoint for r in sim.requests] == [Endpoint.PLIVO_HANGUP]
    assert only(sim.requests).json == {"call_uuid": simulated.carrier_id}


async def test_a_call_answered_meanwhile_is_hung_up_after_the_cancel_misses(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        await carrier(sim, client).hangup(learned(simulated))  # we think it is not answered
    assert simulated.status is SimStatus.COMPLETED
    assert [r.endpoint for r in sim.requests] == [Endpoint.PLIVO_CANCEL, Endpoint.PLIVO_HANGUP]


async def test_an_inbound_call_is_hung_up_by_its_call_uuid(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = sim.add_call("plivo", from_number="+1", to="+2", status=SimStatus.RINGING)
        call = make_call("plivo", simulated.carrier_id, direction=Direction.INBOUND)
        await carrier(sim, client).hangup(call)
    assert simulated.status is SimStatus.CANCELED
    assert [r.endpoint for r in sim.requests] == [Endpoint.PLIVO_HANGUP]


@pytest.mark.parametrize("answered", [True, False])
async def test_a_call_gone_from_both_endpoints_is_hung_up(
    answered: bool, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.COMPLETED)
        await carrier(sim, client).hangup(learned(simulated, answered=answered))
        await carrier(sim, client).hangup(make_call("plivo", UNKNOWN))
    assert {r.endpoint for r in sim.requests} == {Endpoint.PLIVO_HANGUP, Endpoint.PLIVO_CANCEL}
    assert len(sim.requests) == 4


async def test_hangup_is_retried_because_it_is_idempotent(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        sim.arm(Endpoint.PLIVO_HANGUP, Fault(status=503, times=2))
        await carrier(sim, client).hangup(learned(simulated, answered=True))
    assert simulated.status is SimStatus.COMPLETED
    assert len(sim.requests_to(Endpoint.PLIVO_HANGUP)) == 3


async def test_hangup_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        answered = placed(sim, SimStatus.IN_PROGRESS)
        queued = placed(sim)
        await carrier(sim, client).hangup(learned(answered, answered=True))
        await carrier(sim, client).hangup(request_only(queued))
    client_, adapter = sdk(sim, 204, None)
    client_.calls.delete(answered.carrier_id)
    client_.calls.cancel(queued.request_id)
    same_request(adapter.captured[0], ours(only(sim.requests_to(Endpoint.PLIVO_HANGUP))))
    same_request(adapter.captured[1], ours(only(sim.requests_to(Endpoint.PLIVO_CANCEL))))


# -- status ---------------------------------------------------------------------------------------

ENDINGS = [
    (SimStatus.COMPLETED, EndReason.COMPLETED),
    (SimStatus.BUSY, EndReason.BUSY),
    (SimStatus.NO_ANSWER, EndReason.NO_ANSWER),
    (SimStatus.FAILED, EndReason.FAILED),
    (SimStatus.CANCELED, EndReason.CANCELED),
]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (SimStatus.QUEUED, CarrierStatus(live=True, answered=False)),
        (SimStatus.RINGING, CarrierStatus(live=True, answered=False, ringing=True)),
        (SimStatus.IN_PROGRESS, CarrierStatus(live=True, answered=True)),
        *((status, CarrierStatus(live=False, end_reason=reason)) for status, reason in ENDINGS),
    ],
)
async def test_status_maps_every_plivo_state(
    status: SimStatus, expected: CarrierStatus, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, status)
        assert await carrier(sim, client).status(learned(simulated)) == expected


async def test_status_asks_live_then_queued_then_the_record(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.BUSY)
        status = await carrier(sim, client).status(learned(simulated))
    assert status == CarrierStatus(live=False, end_reason=EndReason.BUSY)
    assert [(r.endpoint, r.path.split("/")[-2]) for r in sim.requests] == [
        (Endpoint.PLIVO_LIVE, simulated.carrier_id),
        (Endpoint.PLIVO_QUEUED, simulated.request_id),
        (Endpoint.PLIVO_CDR, simulated.carrier_id),
    ]


async def test_a_queued_call_known_by_its_request_is_live(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim)
        status = await carrier(sim, client).status(request_only(simulated))
    assert status == CarrierStatus(live=True, answered=False)


async def test_a_call_with_no_trace_anywhere_is_ended_completed(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        status = await carrier(sim, client).status(make_call("plivo", UNKNOWN))
        inbound = make_call("plivo", UNKNOWN, direction=Direction.INBOUND)
        inbound_status = await carrier(sim, client).status(inbound)
    assert status == inbound_status == CarrierStatus(live=False, end_reason=EndReason.COMPLETED)
    assert [r.endpoint for r in sim.requests] == [
        Endpoint.PLIVO_LIVE,
        Endpoint.PLIVO_QUEUED,
        Endpoint.PLIVO_CDR,
        Endpoint.PLIVO_LIVE,
        Endpoint.PLIVO_CDR,
    ]


async def test_status_without_a_carrier_id_is_lost(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        status = await carrier(sim, client).status(make_call("plivo", None))
    assert status == CarrierStatus(live=False, end_reason=EndReason.LOST)
    assert sim.requests == []


@pytest.mark.parametrize("endpoint", [Endpoint.PLIVO_LIVE, Endpoint.PLIVO_CDR])
async def test_a_failing_lookup_is_a_retryable_error_not_an_ending(
    endpoint: Endpoint, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.COMPLETED)
        sim.arm(endpoint, Fault(status=502, times=None))
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).status(learned(simulated))
    assert (raised.value.retryable, raised.value.status) == (True, 502)
    assert len(sim.requests_to(endpoint)) == 3


async def test_an_undocumented_live_status_is_a_retryable_error(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.PLIVO_LIVE, Fault(status=200, body={"call_status": "dreaming"}))
        with pytest.raises(CarrierError, match="dreaming") as raised:
            await carrier(sim, client).status(make_call("plivo", UNKNOWN))
    assert raised.value.retryable is True


async def test_lookups_send_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.COMPLETED)
        await carrier(sim, client).status(learned(simulated))
    client_, adapter = sdk(sim, 200, {"call_status": "in-progress"})
    client_.live_calls.get(simulated.carrier_id)
    client_.queued_calls.get(simulated.request_id)
    client_.calls.get(simulated.carrier_id)
    live, queued, record = (ours(r) for r in sim.requests)
    same_request(adapter.captured[0], live)
    same_request(adapter.captured[1], queued)
    # the SDK repeats the uuid as a query parameter of the record lookup; the path is the same
    assert (adapter.captured[2].method, adapter.captured[2].path) == (record.method, record.path)
    assert adapter.captured[2].authorization == record.authorization


# -- speak and DTMF -------------------------------------------------------------------------------


async def test_speak_uses_the_speak_api_on_the_call_uuid(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        await carrier(sim, client).speak(learned(simulated, answered=True), "Hello", None)
        await carrier(sim, client).send_dtmf(learned(simulated, answered=True), "12#w", None)
    assert simulated.actions == [
        (
            "speak",
            {
                "call_uuid": simulated.carrier_id,
                "text": "Hello",
                "voice": "WOMAN",
                "language": "en-US",
            },
        ),
        ("dtmf", {"call_uuid": simulated.carrier_id, "digits": "12#w"}),
    ]


async def test_speak_and_dtmf_send_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        await carrier(sim, client).speak(learned(simulated, answered=True), "Hello", None)
        await carrier(sim, client).send_dtmf(learned(simulated, answered=True), "12#", None)
    client_, adapter = sdk(sim, 200, {"message": "ok"})
    client_.calls.speak(simulated.carrier_id, "Hello", voice="WOMAN", language="en-US")
    client_.calls.send_digits(simulated.carrier_id, "12#")
    same_request(adapter.captured[0], ours(only(sim.requests_to(Endpoint.PLIVO_SPEAK))))
    same_request(adapter.captured[1], ours(only(sim.requests_to(Endpoint.PLIVO_DTMF))))


Action = Callable[[PlivoCarrier, Call], Any]


@pytest.mark.parametrize(
    "act",
    [lambda c, call: c.speak(call, "hi", None), lambda c, call: c.send_dtmf(call, "1", None)],
    ids=["speak", "dtmf"],
)
async def test_speak_and_dtmf_on_a_call_not_live_are_refused(
    act: Action, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.COMPLETED)
        with pytest.raises(CarrierError, match="not live") as raised:
            await act(carrier(sim, client), learned(simulated))
    assert raised.value.retryable is False


async def test_speak_is_not_retried(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = placed(sim, SimStatus.IN_PROGRESS)
        sim.arm(Endpoint.PLIVO_SPEAK, Fault(status=500, after=True))
        with pytest.raises(CarrierError):
            await carrier(sim, client).speak(learned(simulated), "hi", None)
    assert len(simulated.actions) == 1


async def test_bad_digits_and_unplaced_calls_send_nothing(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        plivo_carrier = carrier(sim, client)
        with pytest.raises(CarrierError, match="DTMF"):
            await plivo_carrier.send_dtmf(make_call("plivo", UNKNOWN), "1;2", None)
        with pytest.raises(CarrierError, match="not reached"):
            await plivo_carrier.speak(make_call("plivo", None), "hi", None)
    assert sim.requests == []


# -- the rest of the protocol ---------------------------------------------------------------------


async def test_instruct_is_a_no_op_and_the_webhook_half_is_the_wire_module(
    autojump_clock: MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        plivo_carrier = carrier(sim, client)
        await plivo_carrier.instruct(make_call("plivo", UNKNOWN), Instructions(Reply.HANGUP))
        assert sim.requests == []
    fields = {"CallUUID": UNKNOWN, "CallStatus": "ringing", "Direction": "inbound"}
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    token = sim.accounts.plivo_auth_token
    signature = wire.signature_v3(token, "POST", WEBHOOK, fields, "nonce1")
    signed = request(WEBHOOK, body, {wire.V3: signature, wire.V3_NONCE: "nonce1"})
    assert plivo_carrier.has_signature(signed.headers)
    assert plivo_carrier.verify(signed)
    assert plivo_carrier.replay_key(signed) == wire.replay_key(signed)
    event = plivo_carrier.parse(signed)
    assert (event.provider_call_id, event.call_id) == (UNKNOWN, CALL_ID)
    answer = plivo_carrier.reply(
        event, Instructions(Reply.STREAM, call_id=CALL_ID, stream_token="t")
    )
    assert b"wss://voice.example.com/base/media/plivo" in answer.body
    assert plivo_carrier.webhook_methods == frozenset({"GET", "POST"})
    assert plivo_carrier.instructs_by_rest is False
