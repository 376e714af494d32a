"""The simulator's REST surface: credentials, routes, faults, call records and shapes; and the
official SDKs driving it over real HTTP (its answers must be what the SDKs understand)."""

from __future__ import annotations

from typing import Any

import httpx
import plivo
import pytest
import telnyx
import trio
from plivo.rest import client as plivo_client
from trio.testing import MockClock
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as TwilioClient

from voicecalld.carriers.plivo.wire import is_call_id as is_plivo_id
from voicecalld.carriers.rest import basic_authorization
from voicecalld.carriers.telnyx.wire import is_call_id as is_telnyx_id
from voicecalld.carriers.twilio.wire import is_call_id as is_twilio_id
from voicecalld.sim.faults import Endpoint, Fault, FaultBook
from voicecalld.sim.rest import FakeCarriers, serve_fake_carriers
from voicecalld.sim.state import CARRIERS, SimStatus, new_carrier_id

from .helpers import CALL_ID
from .rest_support import fake_carriers, only


def twilio_auth(sim: FakeCarriers) -> dict[str, str]:
    accounts = sim.accounts
    credential = basic_authorization(accounts.twilio_account_sid, accounts.twilio_auth_token)
    return {"authorization": credential}


def plivo_auth(sim: FakeCarriers) -> dict[str, str]:
    accounts = sim.accounts
    return {"authorization": basic_authorization(accounts.plivo_auth_id, accounts.plivo_auth_token)}


def telnyx_auth(sim: FakeCarriers) -> dict[str, str]:
    return {"authorization": f"Bearer {sim.accounts.telnyx_api_key}"}


def twilio_calls(sim: FakeCarriers) -> str:
    return f"{sim.base_url}/2010-04-01/Accounts/{sim.accounts.twilio_account_sid}/Calls"


def plivo_account(sim: FakeCarriers) -> str:
    return f"{sim.base_url}/v1/Account/{sim.accounts.plivo_auth_id}"


# -- credentials and routes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic", "Basic !!!", "Bearer x", "basic Zm9vOmJhcg==", "Basic QUM6d3Jvbmc="],
)
async def test_wrong_credentials_are_401_in_each_carriers_shape(
    authorization: str | None, autojump_clock: MockClock
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with fake_carriers() as (sim, client):
        twilio = await client.get(f"{twilio_calls(sim)}/CA{'0' * 32}.json", headers=headers)
        plivo_ = await client.get(f"{plivo_account(sim)}/Call/x/", headers=headers)
        telnyx_ = await client.get(f"{sim.base_url}/v2/calls/v3:x", headers=headers)
        swapped = await client.get(f"{sim.base_url}/v2/calls/v3:x", headers=twilio_auth(sim))
    assert [r.status_code for r in (twilio, plivo_, telnyx_, swapped)] == [401] * 4
    assert twilio.json()["code"] == 20003
    assert "error" in plivo_.json()
    assert telnyx_.json()["errors"][0]["code"] == "10009"
    assert len(sim.requests) == 4  # recorded all the same


async def test_unknown_routes_and_foreign_accounts_are_404(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        other_account = f"{sim.base_url}/2010-04-01/Accounts/AC{'1' * 32}/Calls.json"
        answers = [
            await client.post(other_account, headers=twilio_auth(sim)),
            await client.get(f"{twilio_calls(sim)}.xml", headers=twilio_auth(sim)),
            await client.post(f"{plivo_account(sim)}/Conference/", headers=plivo_auth(sim)),
            await client.post(
                f"{sim.base_url}/v2/calls/v3:x/actions/fly", headers=telnyx_auth(sim)
            ),
            await client.get(f"{sim.base_url}/elsewhere"),
        ]
    assert [a.status_code for a in answers] == [404] * 5
    assert answers[0].json()["code"] == 20404
    assert answers[3].json()["errors"][0]["code"] == "10005"
    assert [r.endpoint for r in sim.requests] == [
        Endpoint.TWILIO_CREATE,
        None,
        None,
        None,
        None,
    ]


async def test_bad_bodies_are_refused_as_the_carrier_would(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        plivo_ = await client.post(
            f"{plivo_account(sim)}/Call/", content=b"[1]", headers=plivo_auth(sim)
        )
        telnyx_ = await client.post(
            f"{sim.base_url}/v2/calls", content=b"{", headers=telnyx_auth(sim)
        )
        huge = await client.post(
            f"{sim.base_url}/v2/calls", content=b" " * (1024 * 1024 + 1), headers=telnyx_auth(sim)
        )
        twilio = await client.post(
            f"{twilio_calls(sim)}.json", data={"To": "+1"}, headers=twilio_auth(sim)
        )
    assert (plivo_.status_code, telnyx_.status_code, huge.status_code) == (400, 422, 413)
    assert (twilio.status_code, twilio.json()["code"]) == (400, 21213)
    assert sim.calls == {}


# -- the call registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
def test_added_calls_get_ids_in_their_carriers_format(carrier: str) -> None:
    sim = FakeCarriers()
    call = sim.add_call(carrier, from_number="+1", to="+2", call_id=CALL_ID)
    checks = {"twilio": is_twilio_id, "plivo": is_plivo_id, "telnyx": is_telnyx_id}
    assert checks[carrier](call.carrier_id)
    assert sim.call(call.carrier_id) is call
    assert (call.status, call.direction, call.call_id) == (SimStatus.RINGING, "inbound", CALL_ID)
    assert sim.set_status(call.carrier_id, SimStatus.IN_PROGRESS).answered
    with pytest.raises(ValueError, match="unknown carrier"):
        new_carrier_id("vonage")


def test_a_plivo_call_placed_by_someone_else_has_a_request_uuid() -> None:
    sim = FakeCarriers()
    placed = sim.add_call("plivo", from_number="+1", to="+2", direction="outbound")
    assert placed.request_id is not None
    assert is_plivo_id(placed.request_id)
    assert placed.request_id != placed.carrier_id
    assert sim.add_call("plivo", from_number="+1", to="+2").request_id is None


def test_the_config_helpers_point_at_the_simulator() -> None:
    sim = FakeCarriers(base_url="http://127.0.0.1:9")
    assert sim.twilio_config().api_base_url == sim.plivo_config().api_base_url == sim.base_url
    telnyx_config = sim.telnyx_config()
    assert telnyx_config.connection_id == sim.accounts.telnyx_connection_id
    assert telnyx_config.public_key == sim.accounts.telnyx_public_key
    assert sim.accounts.twilio_auth_token not in repr(sim.accounts)


# -- faults ---------------------------------------------------------------------------------------


def test_a_fault_hits_as_many_requests_as_armed() -> None:
    book = FaultBook()
    twice, forever = Fault(status=500, times=2), Fault(delay=1.0, times=None)
    book.arm(Endpoint.TWILIO_FETCH, twice)
    book.arm(Endpoint.PLIVO_LIVE, forever)
    assert [book.take(Endpoint.TWILIO_FETCH) for _ in range(3)] == [twice, twice, None]
    assert [book.take(Endpoint.PLIVO_LIVE) for _ in range(5)] == [forever] * 5
    book.disarm(Endpoint.PLIVO_LIVE)
    assert book.take(Endpoint.PLIVO_LIVE) is None
    book.arm(Endpoint.TELNYX_DIAL, twice)
    book.disarm()
    assert book.take(Endpoint.TELNYX_DIAL) is None
    assert Endpoint.TELNYX_SEND_DTMF.carrier == "telnyx"


async def test_a_fault_before_the_request_leaves_no_trace(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_CREATE, Fault(status=503))
        form = {"To": "+1", "From": "+2", "Url": "https://x.test/"}
        failed = await client.post(f"{twilio_calls(sim)}.json", data=form, headers=twilio_auth(sim))
        created = await client.post(
            f"{twilio_calls(sim)}.json", data=form, headers=twilio_auth(sim)
        )
    assert (failed.status_code, failed.json()["code"]) == (503, 20500)
    assert created.status_code == 201
    assert list(sim.calls) == [created.json()["sid"]]


async def test_a_fault_after_the_request_hides_its_effect(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TELNYX_DIAL, Fault(status=502, body={"oops": True}, after=True))
        body = {"connection_id": sim.accounts.telnyx_connection_id, "from": "+1", "to": "+2"}
        answer = await client.post(f"{sim.base_url}/v2/calls", json=body, headers=telnyx_auth(sim))
    assert (answer.status_code, answer.json()) == (502, {"oops": True})
    assert len(sim.calls) == 1


async def test_drop_delay_and_redirect(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        url = f"{sim.base_url}/v2/calls/v3:x"
        sim.arm(Endpoint.TELNYX_FETCH, Fault(drop=True))
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url, headers=telnyx_auth(sim))
        sim.arm(Endpoint.TELNYX_FETCH, Fault(redirect="http://elsewhere.invalid/x"))
        moved = await client.get(url, headers=telnyx_auth(sim))
        sim.arm(Endpoint.TELNYX_FETCH, Fault(delay=7.0))
        start = trio.current_time()
        late = await client.get(url, headers=telnyx_auth(sim))
        waited = trio.current_time() - start
    assert (moved.status_code, moved.headers["location"]) == (302, "http://elsewhere.invalid/x")
    assert late.status_code == 404  # after the delay, the request itself is answered
    assert waited >= 7.0


# -- carrier semantics ----------------------------------------------------------------------------


async def test_plivo_lookups_keep_plivos_ambiguity(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        call = sim.add_call("plivo", from_number="+1", to="+2", direction="outbound")
        call.set_status(SimStatus.QUEUED)
        base = f"{plivo_account(sim)}/Call"

        async def lookup(uuid: str, status: str | None) -> int:
            params = {"status": status} if status else None
            answer = await client.get(f"{base}/{uuid}/", params=params, headers=plivo_auth(sim))
            return answer.status_code

        assert call.request_id is not None
        queued = [await lookup(call.request_id, "queued"), await lookup(call.carrier_id, "live")]
        call.set_status(SimStatus.RINGING)
        ringing = [await lookup(call.request_id, "queued"), await lookup(call.carrier_id, "live")]
        ringing.append(await lookup(call.carrier_id, None))
        call.set_status(SimStatus.NO_ANSWER)
        ended = [await lookup(call.carrier_id, "live"), await lookup(call.carrier_id, None)]
        record = await client.get(f"{base}/{call.carrier_id}/", headers=plivo_auth(sim))
    assert queued == [200, 404]
    assert ringing == [404, 200, 404]
    assert ended == [404, 200]
    assert record.json()["hangup_cause_code"] == 3000
    assert [r.endpoint for r in sim.requests[:3]] == [
        Endpoint.PLIVO_QUEUED,
        Endpoint.PLIVO_LIVE,
        Endpoint.PLIVO_QUEUED,
    ]


async def test_telnyx_ignores_a_repeated_command(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        call = sim.add_call("telnyx", from_number="+1", to="+2", status=SimStatus.IN_PROGRESS)
        url = f"{sim.base_url}/v2/calls/{call.carrier_id}/actions/speak"
        body = {"payload": "hi", "voice": "female", "command_id": "c-1"}
        first = await client.post(url, json=body, headers=telnyx_auth(sim))
        again = await client.post(url, json=body, headers=telnyx_auth(sim))
        fresh = await client.post(url, json={**body, "command_id": "c-2"}, headers=telnyx_auth(sim))
    assert [a.json() for a in (first, again, fresh)] == [{"data": {"result": "ok"}}] * 3
    assert len(call.actions) == 2


async def test_telnyx_refuses_commands_the_state_forbids(autojump_clock: MockClock) -> None:
    async with fake_carriers() as (sim, client):
        ringing = sim.add_call("telnyx", from_number="+1", to="+2", direction="outbound")
        base = f"{sim.base_url}/v2/calls/{ringing.carrier_id}/actions"
        answer = await client.post(f"{base}/answer", json={}, headers=telnyx_auth(sim))
        speak = await client.post(f"{base}/speak", json={"payload": "x"}, headers=telnyx_auth(sim))
    assert [a.status_code for a in (answer, speak)] == [422, 422]
    assert ringing.actions == []


# -- the official SDKs against the simulator (over real HTTP, in a thread) -----------------------


async def test_the_twilio_sdk_understands_the_simulator() -> None:
    async with serve_fake_carriers() as sim:
        accounts = sim.accounts
        client = TwilioClient(accounts.twilio_account_sid, accounts.twilio_auth_token)
        client.api.base_url = sim.base_url

        def drive() -> tuple[Any, Any, Any]:
            created = client.calls.create(
                to="+14155550199",
                from_="+14155550100",
                url=f"https://voice.example.com/webhooks/twilio?call={CALL_ID}",
            )
            sim.set_status(created.sid, SimStatus.IN_PROGRESS)
            fetched = client.calls(created.sid).fetch()
            hung_up = client.calls(created.sid).update(status="completed")
            return created, fetched, hung_up

        created, fetched, hung_up = await trio.to_thread.run_sync(drive)
        with pytest.raises(TwilioRestException) as missing:
            await trio.to_thread.run_sync(client.calls(f"CA{'e' * 32}").fetch)
    assert (created.status, fetched.status, hung_up.status) == (
        "queued",
        "in-progress",
        "completed",
    )
    assert sim.call(created.sid).call_id == CALL_ID
    assert (missing.value.status, missing.value.code) == (404, 20404)


async def test_the_plivo_sdk_understands_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_fake_carriers() as sim:
        monkeypatch.setattr(plivo_client, "API_VOICE_BASE_URI", f"{sim.base_url}/v1/Account")
        client = plivo.RestClient(sim.accounts.plivo_auth_id, sim.accounts.plivo_auth_token)

        def drive() -> tuple[Any, Any]:
            created = client.calls.create(
                from_="+14155550100",
                to_="+14155550199",
                answer_url=f"https://voice.example.com/webhooks/plivo?call={CALL_ID}",
            )
            (call,) = sim.calls.values()
            call.set_status(SimStatus.IN_PROGRESS)
            live = client.live_calls.get(call.carrier_id)
            client.calls.delete(call.carrier_id)
            return created, live

        created, live = await trio.to_thread.run_sync(drive)
        (call,) = sim.calls.values()
        with pytest.raises(plivo.exceptions.ResourceNotFoundError):
            await trio.to_thread.run_sync(client.live_calls.get, call.carrier_id)
    assert created.request_uuid == call.request_id
    assert (live.call_status, live.request_uuid) == ("in-progress", call.request_id)
    assert call.status is SimStatus.COMPLETED


async def test_the_telnyx_sdk_understands_the_simulator() -> None:
    async with serve_fake_carriers() as sim:
        client = telnyx.Telnyx(
            api_key=sim.accounts.telnyx_api_key, base_url=f"{sim.base_url}/v2", max_retries=0
        )

        def drive() -> tuple[Any, Any, Any]:
            dialed = client.calls.dial(
                connection_id=sim.accounts.telnyx_connection_id,
                from_="+14155550100",
                to="+14155550199",
                command_id="c-1",
            )
            assert dialed.data is not None
            control_id = dialed.data.call_control_id
            sim.set_status(control_id, SimStatus.IN_PROGRESS)
            status = client.calls.retrieve_status(control_id)
            spoken = client.calls.actions.speak(control_id, payload="hi", voice="female")
            return dialed, status, spoken

        dialed, status, spoken = await trio.to_thread.run_sync(drive)
        control_id = dialed.data.call_control_id
        sim.set_status(control_id, SimStatus.COMPLETED)
        with pytest.raises(telnyx.UnprocessableEntityError):
            await trio.to_thread.run_sync(lambda: client.calls.actions.hangup(control_id))
        client.close()
    assert dialed.data.is_alive is False
    assert status.data.is_alive is True
    assert spoken.data.result == "ok"
    assert only(sim.call(control_id).actions)[0] == "speak"
