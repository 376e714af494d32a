"""TelnyxCarrier against the fake Telnyx over real HTTP; the official SDK (its requests captured
offline through ``httpx.MockTransport``) is the oracle for paths, methods, auth and bodies."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import telnyx
from trio.testing import MockClock

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import (
    CarrierError,
    CarrierStatus,
    Instructions,
    Reply,
    StreamStarted,
)
from voicecalld.carriers.telnyx import wire
from voicecalld.carriers.telnyx.carrier import STREAM_FIELDS, TelnyxCarrier
from voicecalld.carriers.telnyx.stream import TelnyxStream
from voicecalld.config import CallsConfig
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import FakeCarriers
from voicecalld.sim.state import SimCall, SimStatus

from .helpers import CALL_ID, request
from .rest_support import CALLS, URLS, Captured, capture_httpx, fake_carriers, make_call, only, ours

MEDIA = "wss://voice.example.com/base/media/telnyx"
WEBHOOK = f"https://voice.example.com/base/webhooks/telnyx?call={CALL_ID}"
UNKNOWN = "v3:unknown-call-control-id"


def carrier(
    sim: FakeCarriers, client: httpx.AsyncClient, calls: CallsConfig = CALLS
) -> TelnyxCarrier:
    return TelnyxCarrier(sim.telnyx_config(), URLS, client, calls)


def sdk(sim: FakeCarriers) -> tuple[Any, list[Captured]]:
    answer = {"data": {"call_control_id": UNKNOWN, "is_alive": True, "result": "ok"}}
    http, captured = capture_httpx(answer)
    client = telnyx.Telnyx(
        api_key=sim.accounts.telnyx_api_key,
        base_url="https://api.telnyx.com/v2",
        http_client=http,
        max_retries=0,
    )
    return client, captured


def same_request(theirs: Captured, mine: Captured) -> None:
    assert (theirs.method, theirs.path, theirs.authorization) == (
        mine.method,
        mine.path,
        mine.authorization,
    )
    assert theirs.json == mine.json


def inbound(sim: FakeCarriers, status: SimStatus = SimStatus.RINGING) -> SimCall:
    return sim.add_call("telnyx", from_number="+14155550100", to="+14155550199", status=status)


def outbound(sim: FakeCarriers, status: SimStatus = SimStatus.IN_PROGRESS) -> SimCall:
    return sim.add_call("telnyx", from_number="+1", to="+2", status=status, direction="outbound")


def ours_of(simulated: SimCall, **options: Any) -> Call:
    return make_call("telnyx", simulated.carrier_id, **options)


def command_ids(sim: FakeCarriers) -> list[str]:
    return [r.json["command_id"] for r in sim.requests if r.method == "POST"]


# -- place ----------------------------------------------------------------------------------------


async def test_place_dials_with_our_id_in_client_state(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        control_id = await carrier(sim, client).place(make_call("telnyx", None))
    simulated = sim.call(control_id)
    body = only(sim.requests_to(Endpoint.TELNYX_DIAL)).json
    assert wire.is_call_id(control_id)
    assert simulated.call_id == CALL_ID
    assert wire.decode_client_state(body["client_state"]) == wire.ClientState(call_id=CALL_ID)
    assert body["webhook_url"] == WEBHOOK
    assert body["connection_id"] == sim.accounts.telnyx_connection_id
    assert (body["timeout_secs"], body["time_limit_secs"]) == (26, 600)
    assert uuid.UUID(body["command_id"])


@pytest.mark.parametrize(
    ("ring", "limit", "expected"),
    [(1.0, 30.0, (5, 30)), (600.0, 86400.0, (600, 14400)), (7.2, 14399.5, (8, 14400))],
)
async def test_place_keeps_the_limits_in_telnyx_ranges(
    ring: float, limit: float, expected: tuple[int, int], autojump_clock: MockClock
) -> None:
    calls = CallsConfig(ring_timeout=ring, max_duration=limit)
    async with fake_carriers() as (sim, client):
        await carrier(sim, client, calls).place(make_call("telnyx", None))
    body = only(sim.requests).json
    assert (body["timeout_secs"], body["time_limit_secs"]) == expected


async def test_place_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        await carrier(sim, client).place(make_call("telnyx", None))
    mine = ours(only(sim.requests))
    client_, captured = sdk(sim)
    body = mine.json
    client_.calls.dial(
        connection_id=body["connection_id"],
        from_="+14155550100",
        to="+14155550199",
        webhook_url=WEBHOOK,
        client_state=body["client_state"],
        command_id=body["command_id"],
        timeout_secs=26,
        time_limit_secs=600,
    )
    same_request(only(captured), mine)


async def test_an_ambiguous_dial_is_not_retried(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TELNYX_DIAL, Fault(status=503, after=True))
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).place(make_call("telnyx", None))
    assert raised.value.retryable is True
    assert len(sim.requests_to(Endpoint.TELNYX_DIAL)) == 1
    assert len(sim.calls) == 1


async def test_a_refused_dial_is_final(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        config = sim.telnyx_config()
        wrong = type(config)(
            enabled=True,
            api_key=config.api_key,
            public_key=config.public_key,
            connection_id="999",
            api_base_url=config.api_base_url,
        )
        with pytest.raises(CarrierError, match="10015") as raised:
            await TelnyxCarrier(wrong, URLS, client, CALLS).place(make_call("telnyx", None))
    assert (raised.value.retryable, raised.value.status) == (False, 422)


# -- hangup ---------------------------------------------------------------------------------------


async def test_hangup_hangs_up(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        await carrier(sim, client).hangup(ours_of(simulated, answered=True))
    assert simulated.status is SimStatus.COMPLETED
    ((action, body),) = simulated.actions
    assert action == "hangup"
    assert set(body) == {"command_id"}


async def test_hangup_of_a_call_that_is_gone_succeeds(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        ended = outbound(sim, SimStatus.COMPLETED)
        await carrier(sim, client).hangup(ours_of(ended))  # 422, code 90018
        await carrier(sim, client).hangup(make_call("telnyx", UNKNOWN))  # 404
    assert [r.endpoint for r in sim.requests] == [Endpoint.TELNYX_HANGUP] * 2


async def test_a_retried_hangup_carries_the_same_command_id(autojump_clock: MockClock) -> None:
    """The first attempt took effect and its answer was lost: Telnyx ignores the repeat."""
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        sim.arm(Endpoint.TELNYX_HANGUP, Fault(drop=True, after=True))
        await carrier(sim, client).hangup(ours_of(simulated))
    assert len(sim.requests_to(Endpoint.TELNYX_HANGUP)) == 2
    first, second = command_ids(sim)
    assert first == second
    assert len(simulated.actions) == 1


async def test_another_refusal_of_a_hangup_is_an_error(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        body = {"errors": [{"code": "90015", "title": "Invalid parameter"}]}
        sim.arm(Endpoint.TELNYX_HANGUP, Fault(status=422, body=body))
        with pytest.raises(CarrierError, match="90015") as raised:
            await carrier(sim, client).hangup(ours_of(outbound(sim)))
    assert raised.value.retryable is False


async def test_hangup_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        await carrier(sim, client).hangup(ours_of(simulated))
    mine = ours(only(sim.requests))
    client_, captured = sdk(sim)
    client_.calls.actions.hangup(simulated.carrier_id, command_id=mine.json["command_id"])
    same_request(only(captured), mine)


# -- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (SimStatus.QUEUED, CarrierStatus(live=True)),
        (SimStatus.RINGING, CarrierStatus(live=True)),
        (SimStatus.IN_PROGRESS, CarrierStatus(live=True)),
        *(
            (status, CarrierStatus(live=False, end_reason=EndReason.COMPLETED))
            for status in (
                SimStatus.COMPLETED,
                SimStatus.BUSY,
                SimStatus.NO_ANSWER,
                SimStatus.FAILED,
                SimStatus.CANCELED,
            )
        ),
    ],
)
async def test_status_reads_is_alive(
    status: SimStatus, expected: CarrierStatus, autojump_clock: MockClock
) -> None:
    """Telnyx's status says alive or not, never why it ended nor whether it was answered."""
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim, status)
        assert await carrier(sim, client).status(ours_of(simulated)) == expected


@pytest.mark.parametrize("status", [404, 422])
async def test_a_call_telnyx_no_longer_knows_is_ended_completed(
    status: int, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TELNYX_FETCH, Fault(status=status))
        result = await carrier(sim, client).status(ours_of(outbound(sim)))
    assert result == CarrierStatus(live=False, end_reason=EndReason.COMPLETED)


async def test_status_errors_are_retryable(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TELNYX_FETCH, Fault(status=503, times=None))
        with pytest.raises(CarrierError) as raised:
            await carrier(sim, client).status(make_call("telnyx", UNKNOWN))
        sim.arm(Endpoint.TELNYX_FETCH, Fault(status=200, body={"data": {"record_type": "call"}}))
        with pytest.raises(CarrierError, match="is_alive") as unclear:
            await carrier(sim, client).status(make_call("telnyx", UNKNOWN))
    assert raised.value.retryable is True
    assert unclear.value.retryable is True


async def test_status_sends_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        await carrier(sim, client).status(ours_of(simulated))
    client_, captured = sdk(sim)
    client_.calls.retrieve_status(simulated.carrier_id)
    same_request(only(captured), ours(only(sim.requests)))


# -- instruct -------------------------------------------------------------------------------------


async def test_stream_answers_an_inbound_call_with_the_stream(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = inbound(sim)
        call = ours_of(simulated, direction=Direction.INBOUND)
        await carrier(sim, client).instruct(call, Instructions(Reply.STREAM, CALL_ID, "tok-1"))
    ((action, body),) = simulated.actions
    assert action == "answer"
    assert simulated.status is SimStatus.IN_PROGRESS
    assert body["stream_url"] == MEDIA
    assert {key: body[key] for key in STREAM_FIELDS} == {
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
    }
    assert wire.decode_client_state(body["client_state"]) == wire.ClientState(CALL_ID, "tok-1")


async def test_the_stream_token_reaches_the_stream_reader(autojump_clock: MockClock) -> None:
    """Telnyx echoes the command's client_state on the stream's ``start``: TelnyxStream reads
    the token there (answer), or in ``custom_parameters`` (streaming_start)."""
    async with fake_carriers() as (sim, client):
        answered_inbound, answered_outbound = inbound(sim), outbound(sim)
        telnyx_carrier = carrier(sim, client)
        call = ours_of(answered_inbound, direction=Direction.INBOUND)
        await telnyx_carrier.instruct(call, Instructions(Reply.STREAM, CALL_ID, "tok-in"))
        call = ours_of(answered_outbound, answered=True)
        await telnyx_carrier.instruct(call, Instructions(Reply.STREAM, CALL_ID, "tok-out"))
    for simulated, token in ((answered_inbound, "tok-in"), (answered_outbound, "tok-out")):
        body = simulated.actions[0][1]
        parameters = {p["name"]: p["value"] for p in body.get("custom_parameters", [])}
        start = {
            "event": "start",
            "sequence_number": "1",
            "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
            "start": {
                "call_control_id": simulated.carrier_id,
                "client_state": simulated.client_state,
                "custom_parameters": parameters,
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
        }
        started = TelnyxStream().parse(orjson.dumps(start))
        assert isinstance(started, StreamStarted)
        assert started.token == token


async def test_stream_starts_streaming_on_an_answered_call(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        call = ours_of(simulated, answered=True)
        await carrier(sim, client).instruct(call, Instructions(Reply.STREAM, CALL_ID, "tok-2"))
    ((action, body),) = simulated.actions
    assert action == "streaming_start"
    assert body["stream_url"] == MEDIA
    assert body["custom_parameters"] == [{"name": "token", "value": "tok-2"}]
    assert wire.decode_client_state(body["client_state"]) == wire.ClientState(CALL_ID, "tok-2")


async def test_say_and_hangup_answers_first_when_needed(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        ringing, answered = inbound(sim), outbound(sim)
        telnyx_carrier = carrier(sim, client)
        say = Instructions(Reply.SAY_AND_HANGUP, CALL_ID, text="Your code is 1 2 3")
        await telnyx_carrier.instruct(ours_of(ringing, direction=Direction.INBOUND), say)
        await telnyx_carrier.instruct(ours_of(answered, answered=True), say)
    assert [name for name, _ in ringing.actions] == ["answer", "speak"]
    assert [name for name, _ in answered.actions] == ["speak"]
    speech = answered.actions[0][1]
    assert (speech["payload"], speech["voice"], speech["language"]) == (
        "Your code is 1 2 3",
        "female",
        "en-US",
    )
    assert "stream_url" not in ringing.actions[0][1]


async def test_hangup_and_reject_instructions(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        live, ringing = outbound(sim), inbound(sim)
        telnyx_carrier = carrier(sim, client)
        await telnyx_carrier.instruct(ours_of(live), Instructions(Reply.HANGUP))
        await telnyx_carrier.instruct(ours_of(ringing), Instructions(Reply.REJECT))
        await telnyx_carrier.instruct(ours_of(ringing), Instructions(Reply.REJECT))  # gone: fine
        await telnyx_carrier.instruct(ours_of(live), Instructions(Reply.ACK))
    assert [name for name, _ in live.actions] == ["hangup"]
    assert ringing.actions[0][0] == "reject"
    assert ringing.actions[0][1]["cause"] == "CALL_REJECTED"
    assert len(sim.requests) == 3


async def test_every_command_has_its_own_command_id(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = inbound(sim)
        telnyx_carrier = carrier(sim, client)
        say = Instructions(Reply.SAY_AND_HANGUP, CALL_ID, text="hi")
        await telnyx_carrier.instruct(ours_of(simulated, direction=Direction.INBOUND), say)
        await telnyx_carrier.send_dtmf(ours_of(simulated, answered=True), "1", None)
        await telnyx_carrier.hangup(ours_of(simulated))
    ids = command_ids(sim)
    assert len(ids) == len(set(ids)) == 4


async def test_a_stream_for_a_call_that_ended_is_an_error(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        ended = inbound(sim, SimStatus.CANCELED)
        call = ours_of(ended, direction=Direction.INBOUND)
        with pytest.raises(CarrierError, match="already ended") as raised:
            await carrier(sim, client).instruct(call, Instructions(Reply.STREAM, CALL_ID, "t"))
    assert raised.value.retryable is False


async def test_instructions_send_what_the_sdk_sends(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        ringing, answered = inbound(sim), outbound(sim)
        telnyx_carrier = carrier(sim, client)
        call = ours_of(ringing, direction=Direction.INBOUND)
        await telnyx_carrier.instruct(call, Instructions(Reply.STREAM, CALL_ID, "t1"))
        call = ours_of(answered, answered=True)
        await telnyx_carrier.instruct(call, Instructions(Reply.STREAM, CALL_ID, "t2"))
        await telnyx_carrier.speak(call, "Hello", None)
        await telnyx_carrier.send_dtmf(call, "1#", None)
        await telnyx_carrier.instruct(ours_of(ringing), Instructions(Reply.HANGUP))
        rejected = inbound(sim)
        await telnyx_carrier.instruct(ours_of(rejected), Instructions(Reply.REJECT))
    answer, stream, speak, dtmf, hangup, reject = (ours(r) for r in sim.requests)
    client_, captured = sdk(sim)
    actions = client_.calls.actions
    actions.answer(ringing.carrier_id, **answer.json)
    actions.start_streaming(answered.carrier_id, **stream.json)
    actions.speak(answered.carrier_id, **speak.json)
    actions.send_dtmf(answered.carrier_id, **dtmf.json)
    actions.hangup(ringing.carrier_id, **hangup.json)
    actions.reject(rejected.carrier_id, **reject.json)
    for theirs, mine in zip(captured, (answer, stream, speak, dtmf, hangup, reject), strict=True):
        same_request(theirs, mine)


# -- speak and DTMF -------------------------------------------------------------------------------

Action = Callable[[TelnyxCarrier, Call], Any]


@pytest.mark.parametrize(
    "act",
    [lambda c, call: c.speak(call, "hi", None), lambda c, call: c.send_dtmf(call, "1", None)],
    ids=["speak", "dtmf"],
)
async def test_speak_and_dtmf_on_a_call_that_ended_are_refused(
    act: Action, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        ended = outbound(sim, SimStatus.COMPLETED)
        with pytest.raises(CarrierError, match="already ended") as raised:
            await act(carrier(sim, client), ours_of(ended))
    assert raised.value.retryable is False


async def test_speak_is_retried_safely(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        simulated = outbound(sim)
        sim.arm(Endpoint.TELNYX_SPEAK, Fault(status=500, after=True))
        await carrier(sim, client).speak(ours_of(simulated), "hi", None)
    assert len(sim.requests_to(Endpoint.TELNYX_SPEAK)) == 2
    assert [name for name, _ in simulated.actions] == ["speak"]  # said once


@pytest.mark.parametrize("control_id", ["v4:abc", "v3:a/../b", "v3:", "abc", "v3:a b", ""])
async def test_a_call_control_id_is_checked_before_it_enters_a_path(
    control_id: str, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        telnyx_carrier = carrier(sim, client)
        call = make_call("telnyx", control_id, answered=True)
        for attempt in (
            telnyx_carrier.hangup(call),
            telnyx_carrier.status(call),
            telnyx_carrier.speak(call, "hi", None),
            telnyx_carrier.instruct(call, Instructions(Reply.STREAM, CALL_ID, "t")),
        ):
            with pytest.raises(CarrierError) as raised:
                await attempt
            assert raised.value.retryable is False
        with pytest.raises(CarrierError, match="DTMF"):
            await telnyx_carrier.send_dtmf(make_call("telnyx", UNKNOWN), "12;", None)
    assert sim.requests == []


# -- the webhook half -----------------------------------------------------------------------------


async def test_the_webhook_half_is_the_wire_module(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        telnyx_carrier = carrier(sim, client)
    body = orjson.dumps(
        {
            "data": {
                "event_type": "call.initiated",
                "id": "b3a2c6a1-5f1e-4c2e-9d0a-1f2e3d4c5b6a",
                "payload": {
                    "call_control_id": UNKNOWN,
                    "direction": "incoming",
                    "client_state": wire.encode_client_state(CALL_ID),
                },
            }
        }
    )
    headers = {
        wire.TIMESTAMP_HEADER: "1767225600",
        wire.SIGNATURE_HEADER: wire.sign(sim.accounts.telnyx_signing_seed, 1767225600, body),
    }
    signed = request(WEBHOOK, body, headers)
    assert telnyx_carrier.has_signature(signed.headers)
    assert telnyx_carrier.verify(signed)
    assert telnyx_carrier.replay_key(signed) == wire.replay_key(signed)
    event = telnyx_carrier.parse(signed)
    assert (event.provider_call_id, event.call_id) == (UNKNOWN, CALL_ID)
    assert telnyx_carrier.reply(event, Instructions(Reply.STREAM, CALL_ID, "t")).body == b""
    assert telnyx_carrier.instructs_by_rest is True


async def test_an_unusable_public_key_fails_closed_and_says_so(
    caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        config = sim.telnyx_config()
        broken = type(config)(
            enabled=True,
            api_key=config.api_key,
            public_key="not a key",
            connection_id=config.connection_id,
            api_base_url=config.api_base_url,
        )
        with caplog.at_level(logging.ERROR):
            telnyx_carrier = TelnyxCarrier(broken, URLS, client, CALLS)
    body = b'{"data":{}}'
    headers = {
        wire.TIMESTAMP_HEADER: "1767225600",
        wire.SIGNATURE_HEADER: wire.sign(sim.accounts.telnyx_signing_seed, 1767225600, body),
    }
    assert not telnyx_carrier.verify(request(WEBHOOK, body, headers))
    assert "providers.telnyx.public_key" in caplog.text
