"""How the simulator plays a call, webhook by webhook, against a scripted voicecalld.

No daemon here: webhooks go to an ``httpx.MockTransport`` that answers as voicecalld would (TwiML,
Plivo XML, empty 200s) and checks signatures with the carriers' SDKs; REST actions are recorded on
the call as the REST half records them. Media streams are left to the end-to-end suite. Time is
trio's autojump clock, so rings and talks take no real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import attrs
import httpx
import orjson
import pytest
import trio
from trio.testing import MockClock
from twilio.request_validator import RequestValidator

from voicecalld.sim.audio import Audio
from voicecalld.sim.media import Pacer
from voicecalld.sim.player import Rig, SimulatedCall
from voicecalld.sim.rest import FakeCarriers
from voicecalld.sim.scenario import Outcome, Scenario, WebhookFaults
from voicecalld.sim.sender import Sender
from voicecalld.sim.simulator import Simulator
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id
from voicecalld.sim.stats import Tally

BASE = "https://voice.example.com"
CALL_URL = f"{BASE}/webhooks/twilio?call=c_0123456789abcdef01234567"
DEFAULT = Scenario(ring=0.5, talk=2.0)
SAY_AND_HANG_UP = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi</Say><Hangup/></Response>'
)


@attrs.define
class Seen:
    at: float
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))

    @property
    def event(self) -> Any:
        return orjson.loads(self.body)


Answer = Callable[[Seen], httpx.Response]


@asynccontextmanager
async def offline(
    answer: Answer, scenario: Scenario = DEFAULT
) -> AsyncIterator[tuple[Simulator, list[Seen]]]:
    """A simulator whose webhooks reach ``answer`` (and are logged in order)."""
    seen: list[Seen] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got = Seen(trio.current_time(), str(request.url), dict(request.headers), request.read())
        seen.append(got)
        return answer(got)

    tally = Tally()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client,
        trio.open_nursery() as nursery,
    ):
        carriers = FakeCarriers()
        rig = Rig(
            accounts=carriers.accounts,
            forger=SimAccounts(),
            sender=Sender(client, tally),
            pacer=Pacer(),
            audio=Audio.tone(seconds=0.1),
            tally=tally,
        )
        yield Simulator(carriers, rig, nursery, BASE, scenario), seen
        nursery.cancel_scope.cancel()


def twiml(document: bytes = SAY_AND_HANG_UP) -> Answer:
    """voicecalld's Twilio route: TwiML for fetches, an empty Response for status callbacks."""

    def answer(request: Seen) -> httpx.Response:
        if "CallbackSource" in request.form:
            return httpx.Response(200, content=b"<Response/>")
        return httpx.Response(200, content=document)

    return answer


def placed(sim: Simulator, carrier: str = "twilio", **fields: Any) -> SimulatedCall:
    """A call created through the carrier's REST API, as the REST half records it."""
    record = {
        "from_number": "+15550000000",
        "to": "+14155550199",
        "answer_url": CALL_URL,
        "status_callback": CALL_URL,
        "status_events": ("initiated", "ringing", "answered", "completed"),
        **fields,
    }
    call = SimCall(carrier=carrier, carrier_id=new_carrier_id(carrier), **record)
    sim.carriers.add(call)
    return sim.call(call.carrier_id)


async def test_a_placed_twilio_call_rings_answers_runs_its_twiml_and_ends(
    autojump_clock: MockClock,
) -> None:
    async with offline(twiml()) as (sim, seen):
        call = placed(sim)
        await call.ended.wait()
    statuses = [(s.form["CallStatus"], s.form.get("SequenceNumber")) for s in seen]
    assert statuses == [
        ("initiated", "0"),
        ("ringing", "1"),
        ("in-progress", None),  # the TwiML fetch
        ("in-progress", "2"),  # the answered status callback
        ("completed", "3"),
    ]
    fetch, completed = seen[2], seen[4]
    assert fetch.at == pytest.approx(0.5)
    assert completed.at - fetch.at == pytest.approx(0.3 + 2 / 15), "as long as <Say>Hi</Say> takes"
    assert completed.form["CallDuration"] == "0"
    assert (call.status, call.hung_up_by) == (SimStatus.COMPLETED, "instructions")
    validator = RequestValidator(sim.accounts.twilio_auth_token)
    for request in seen:
        assert validator.validate(request.url, request.form, request.headers["x-twilio-signature"])


@pytest.mark.parametrize(
    ("outcome", "ring", "status", "by", "at"),
    [
        (Outcome.BUSY, 3.0, "busy", "remote", 3.0),
        (Outcome.FAILED, 3.0, "failed", "carrier", 0.0),  # fails before it rings
        (Outcome.NO_ANSWER, 3.0, "no-answer", "carrier", 3.0),
        (Outcome.ANSWER, 30.0, "no-answer", "carrier", 7.0),  # the call's Timeout comes first
    ],
)
async def test_a_callee_that_does_not_answer(
    autojump_clock: MockClock, outcome: Outcome, ring: float, status: str, by: str, at: float
) -> None:
    async with offline(twiml(), Scenario(outcome=outcome, ring=ring)) as (sim, seen):
        call = placed(sim, ring_timeout=7)
        await call.ended.wait()
    last = seen[-1]
    assert last.form["CallStatus"] == status
    assert "fetch" not in [s.form.get("CallbackSource", "fetch") for s in seen]
    assert call.hung_up_by == by
    assert last.at == pytest.approx(at)


async def test_the_number_picks_the_outcome_when_nothing_else_does(
    autojump_clock: MockClock,
) -> None:
    async with offline(twiml()) as (sim, _):
        sim.plan("+14155550001", Scenario(outcome=Outcome.FAILED))
        busy, failed = placed(sim, to="+14155550486"), placed(sim, to="+14155550001")
        await busy.ended.wait()
        await failed.ended.wait()
    assert (busy.status, failed.status) == (SimStatus.BUSY, SimStatus.FAILED)


async def test_voicecalld_hangs_up_a_ringing_call_through_rest(autojump_clock: MockClock) -> None:
    async with offline(twiml(), Scenario(ring=None)) as (sim, seen):
        call = placed(sim)
        await trio.sleep(3)
        call.call.record("status", {"Status": "canceled"})  # what the REST half does
        call.call.set_status(SimStatus.CANCELED)
        await call.ended.wait()
    assert seen[-1].form["CallStatus"] == "canceled"
    assert seen[-1].at == pytest.approx(3.0)
    assert call.hung_up_by == "api"


async def test_a_twilio_redirect_replaces_the_running_twiml(autojump_clock: MockClock) -> None:
    held = b"<Response><Pause length='60'/></Response>"
    async with offline(twiml(held), Scenario(ring=0.0, talk=None)) as (sim, seen):
        call = placed(sim)
        await trio.sleep(5)
        call.call.record("twiml", {"Twiml": "<Response><Say>Bye now</Say><Hangup/></Response>"})
        await call.ended.wait()
    assert seen[-1].form["CallStatus"] == "completed"
    assert seen[-1].at == pytest.approx(5.0 + 0.3 + 7 / 15)


async def test_an_answer_twilio_cannot_run_ends_the_call(autojump_clock: MockClock) -> None:
    async with offline(twiml(b"<Response><Dial>+1</Dial></Response>")) as (sim, seen):
        call = placed(sim)
        await call.ended.wait()
    assert call.invalid_answers == ["unsupported TwiML verb <Dial>"]
    assert sim.tally.invalid["answer"] == 1
    assert seen[-1].form["CallStatus"] == "completed"


async def test_webhook_faults(autojump_clock: MockClock) -> None:
    """Forged copies are refused by a validator, replays and redeliveries come in twice."""

    def answer(request: Seen) -> httpx.Response:
        validator = RequestValidator(accounts.twilio_auth_token)
        signature = request.headers["x-twilio-signature"]
        if not validator.validate(request.url, request.form, signature):
            return httpx.Response(403)
        return twiml()(request)

    faults = WebhookFaults(forged=True, replayed=True, duplicated=True)
    async with offline(answer, Scenario(ring=0.5, faults=faults)) as (sim, _):
        accounts = sim.accounts
        call = placed(sim)
        await call.ended.wait()
    tally = sim.tally.webhooks
    assert tally[("twilio ringing (forged)", "403")] == 1
    assert tally[("twilio ringing", "200")] == 1
    assert tally[("twilio ringing (replayed)", "200")] == 1
    assert tally[("twilio ringing (redelivered)", "200")] == 1
    assert [a.text for a in call.answers][:4] == ["403", "200", "200", "200"]


async def test_late_status_callbacks_are_overtaken(autojump_clock: MockClock) -> None:
    async with offline(twiml(), Scenario(ring=0.1, faults=WebhookFaults(late=1.0))) as (sim, seen):
        call = placed(sim)
        await call.ended.wait()
    order = [s.form.get("SequenceNumber", "fetch") for s in seen]
    assert order == ["1", "fetch", "3", "0", "2"], "the first and third come a second late"
    assert [s.at for s in seen[3:]] == [pytest.approx(1.0), pytest.approx(1.1)]


async def test_an_undelivered_webhook_is_tried_again(autojump_clock: MockClock) -> None:
    failures = iter([503, 503])

    def answer(request: Seen) -> httpx.Response:
        if orjson.loads(request.body)["data"]["event_type"] == "call.hangup":
            return httpx.Response(next(failures, 200))
        return httpx.Response(200)

    async with offline(answer, Scenario(outcome=Outcome.BUSY, ring=0.1)) as (sim, seen):
        call = placed(sim, "telnyx", answer_url=None)
        await call.ended.wait()
    hangups = [s for s in seen if s.event["data"]["event_type"] == "call.hangup"]
    assert [h.event["meta"]["attempt"] for h in hangups] == [1, 2, 3]
    assert len({h.event["data"]["id"] for h in hangups}) == 1, "the same event each time"
    assert hangups[2].at - hangups[0].at == pytest.approx(0.25 + 0.5)
    assert sim.tally.webhooks[("telnyx call.hangup", "503")] == 2


async def test_a_plivo_inbound_call_runs_the_answer_xml(autojump_clock: MockClock) -> None:
    def answer(request: Seen) -> httpx.Response:
        if request.form["Event"] == "StartApp":
            return httpx.Response(200, content=b"<Response><Speak>Hello</Speak></Response>")
        return httpx.Response(200, content=b"<Response></Response>")

    async with offline(answer) as (sim, seen):
        call = sim.inbound("plivo", from_number="+14155550100", to="+15550000000")
        await call.ended.wait()
    assert [(s.form["Event"], s.form["CallStatus"]) for s in seen] == [
        ("StartApp", "ringing"),
        ("Hangup", "completed"),
    ]
    assert seen[1].form["HangupSource"] == "Answer XML"
    assert seen[0].url == f"{BASE}/webhooks/plivo"


async def test_a_telnyx_inbound_call_waits_for_commands(autojump_clock: MockClock) -> None:
    async with offline(lambda _: httpx.Response(200), Scenario(talk=None)) as (sim, seen):
        call = sim.inbound("telnyx", from_number="+14155550100", to="+15550000000")
        await trio.sleep(1)
        call.call.client_state = "c3RhdGU="  # as the REST half keeps it
        call.call.record("answer", {"client_state": "c3RhdGU="})
        call.call.set_status(SimStatus.IN_PROGRESS)
        await call.answered.wait()
        call.call.record("speak", {"payload": "Hello, caller"})
        await trio.sleep(5)
        call.call.record("hangup", {})
        call.call.set_status(SimStatus.COMPLETED)
        await call.ended.wait()
    events = [(s.event["data"]["event_type"], round(s.at, 2)) for s in seen]
    speech = 0.3 + len("Hello, caller") / 15
    assert events == [
        ("call.initiated", 0.0),
        ("call.answered", 1.0),
        ("call.speak.started", 1.0),
        ("call.speak.ended", round(1.0 + speech, 2)),
        ("call.hangup", 6.0),
    ]
    hangup = seen[-1].event["data"]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "callee")
    assert hangup["client_state"] == "c3RhdGU=", "echoes the last command's client_state"


async def test_a_telnyx_caller_gives_up_when_nobody_answers(autojump_clock: MockClock) -> None:
    async with offline(lambda _: httpx.Response(200), Scenario(patience=12)) as (sim, seen):
        call = sim.inbound("telnyx", from_number="+14155550100", to="+15550000000")
        await call.ended.wait()
    hangup = seen[-1].event["data"]["payload"]
    assert hangup["hangup_cause"] == "originator_cancel"
    assert seen[-1].at == pytest.approx(12.0)
    assert call.status is SimStatus.CANCELED


async def test_an_outbound_api_call_names_no_call_of_voicecalld(autojump_clock: MockClock) -> None:
    async with offline(twiml()) as (sim, seen):
        call = sim.outbound_api("twilio", from_number="+14155550100", to="+14155550199")
        await call.ended.wait()
    assert {s.url for s in seen} == {f"{BASE}/webhooks/twilio"}
    assert {s.form["Direction"] for s in seen} == {"outbound-api"}
    assert call.call.call_id is None
    with pytest.raises(ValueError, match="unknown carrier"):
        sim.inbound("vonage", from_number="+1", to="+2")
