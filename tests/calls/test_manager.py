"""The call manager with a scripted carrier and an in-memory store, on the autojump clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from tests.calls.memory_store import MemoryStore
from voicecalld.calls.manager import CallManager, CapacityReached, DialFailed
from voicecalld.calls.model import Call, Direction, EndReason, Mode, State
from voicecalld.carriers.base import (
    CarrierError,
    CarrierStatus,
    HttpReply,
    Instructions,
    Reply,
    StreamProtocol,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.twilio.stream import TwilioStream
from voicecalld.config import Config
from voicecalld.metrics import Metrics
from voicecalld.store.base import StoreError
from voicecalld.testing import make_config


class ScriptedCarrier:
    """A carrier whose REST half is scripted by the test (the webhook half is unused here)."""

    name = "mock"  # stands in for the mock carrier: config knows its from_number
    webhook_methods = frozenset({"POST"})
    instructs_by_rest = False

    def __init__(self) -> None:
        self.stream: StreamProtocol = TwilioStream()
        self.placed: list[Call] = []
        self.hangups: list[str] = []
        self.fail_place: CarrierError | None = None
        self.fail_hangups = 0
        self.on_place: object = None
        self.dial_gate: trio.Event | None = None

    def has_signature(self, headers: Mapping[str, str]) -> bool:
        return True

    def verify(self, request: WebhookRequest) -> bool:
        return True

    def replay_key(self, request: WebhookRequest) -> str:
        return "key"

    def parse(self, request: WebhookRequest) -> WebhookEvent:
        raise NotImplementedError

    def reply(self, event: WebhookEvent | None, instructions: Instructions) -> HttpReply:
        raise NotImplementedError

    async def place(self, call: Call) -> str:
        self.placed.append(call)
        if callable(self.on_place):
            await self.on_place(call)
        if self.dial_gate is not None:
            await self.dial_gate.wait()
        if self.fail_place is not None:
            raise self.fail_place
        return f"CA{len(self.placed):032x}"

    async def hangup(self, call: Call) -> None:
        self.hangups.append(call.id)
        if self.fail_hangups:
            self.fail_hangups -= 1
            raise CarrierError("carrier says 503", retryable=True, status=503)

    async def status(self, call: Call) -> CarrierStatus:
        return CarrierStatus(live=True)

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        return None

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None:
        return None

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        return None


class Carriers:
    def __init__(self, carrier: ScriptedCarrier) -> None:
        self.carrier = carrier

    def get(self, name: str) -> ScriptedCarrier | None:
        return self.carrier if name == "mock" else None


@attrs.define
class Rig:
    manager: CallManager
    carrier: ScriptedCarrier
    store: MemoryStore
    metrics: Metrics


stores: dict[Path, MemoryStore] = {}


def virtual_now() -> datetime:
    """Wall time that follows the mock clock, so record times and timers agree."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=trio.current_time())


@asynccontextmanager
async def rig(tmp_path: Path, **calls: object) -> AsyncIterator[Rig]:
    config: Config = make_config(tmp_path, calls={"default_provider": "mock", **calls})
    carrier = ScriptedCarrier()
    metrics = Metrics()
    store = stores.setdefault(tmp_path, MemoryStore(virtual_now))  # a "restart" keeps it
    async with trio.open_nursery() as nursery:
        manager = CallManager(config, store, Carriers(carrier), metrics, now=virtual_now)
        await nursery.start(manager.run)
        yield Rig(manager, carrier, store, metrics)
        nursery.cancel_scope.cancel()


def event(kind: WebhookKind, sid: str = "CA" + "9" * 32, **fields: object) -> WebhookEvent:
    return WebhookEvent(kind=kind, provider_call_id=sid, **fields)  # type: ignore[arg-type]


async def test_the_record_is_durable_and_the_slot_taken_before_the_dial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, max_concurrent=1) as r:
        seen: list[tuple[Call | None, int]] = []

        async def at_dial(call: Call) -> None:
            seen.append((await r.store.get(call.id), len(r.manager.calls)))

        r.carrier.on_place = at_dial
        call = await r.manager.place("+15551234567", provider="mock")
        assert seen == [(seen[0][0], 1)]
        assert seen[0][0] is not None and seen[0][0].state is State.INITIATED
        assert call.provider_call_id == "CA" + f"{1:032x}"
        with pytest.raises(CapacityReached):
            await r.manager.place("+15551234568", provider="mock")


async def test_a_failed_dial_ends_failed_and_frees_the_slot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, max_concurrent=1) as r:
        r.carrier.fail_place = CarrierError("400 invalid number", retryable=False, status=400)
        with pytest.raises(DialFailed) as failed:
            await r.manager.place("+15551234567", provider="mock")
        assert failed.value.call.end_reason is EndReason.FAILED
        assert r.manager.calls == {}
        assert r.carrier.hangups == [], "nothing reached the carrier: nothing to hang up"
        r.carrier.fail_place = None
        await r.manager.place("+15551234567", provider="mock")


async def dialing(r: Rig, nursery: trio.Nursery) -> tuple[str, list[Call], trio.Event]:
    """A call being placed, its dial held at the carrier: its id, the list ``place()``'s
    answer lands in, and the event that lets the dial return."""
    gate = r.carrier.dial_gate = trio.Event()
    placed: list[Call] = []

    async def place() -> None:
        placed.append(await r.manager.place("+15551234567", provider="mock"))

    nursery.start_soon(place)
    await trio.sleep(0.1)
    (call_id,) = r.manager.calls
    return call_id, placed, gate


async def test_a_call_ended_while_dialing_is_hung_up_once_dialed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r, trio.open_nursery() as nursery:
        call_id, placed, gate = await dialing(r, nursery)
        ended = await r.manager.hangup(call_id)
        assert ended.end_reason is EndReason.HANGUP_BOT
        gate.set()
        await trio.sleep(1)
        assert placed[0].provider_call_id is not None
        assert r.carrier.hangups == [call_id]
        stored = await r.store.get(call_id)
        assert stored is not None
        assert "hangup_owed" not in stored.metadata


async def test_a_dial_returning_during_a_slow_end_write_leaves_the_call_ended(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The hang-up's end is in memory but its write still commits when the dial returns: the
    # store has the call's older row, and writing that back (with the carrier's id, to owe the
    # hang-up) would revive the call in the store.
    async with rig(tmp_path) as r, trio.open_nursery() as nursery:
        call_id, placed, gate = await dialing(r, nursery)
        await r.store.commits.acquire()
        nursery.start_soon(r.manager.hangup, call_id)
        await trio.sleep(0.1)
        assert call_id not in r.manager.calls, "ended in memory"
        gate.set()
        await trio.sleep(0.1)
        r.store.commits.release()
        await trio.sleep(1)
        assert placed[0].ended and placed[0].end_reason is EndReason.HANGUP_BOT
        stored = await r.store.get(call_id)
        assert stored is not None
        assert (stored.state, stored.end_reason) == (State.ENDED, EndReason.HANGUP_BOT)
        assert stored.provider_call_id == placed[0].provider_call_id
        assert r.carrier.hangups == [call_id]


async def test_ring_timeout_ends_an_unanswered_call(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ring_timeout=30.0) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        await trio.sleep(29)
        assert call.id in r.manager.calls
        await trio.sleep(2)
        stored = await r.store.get(call.id)
        assert stored is not None
        assert stored.end_reason is EndReason.TIMEOUT
        assert r.carrier.hangups == [call.id]


async def test_max_duration_counts_from_the_answer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ring_timeout=30.0, max_duration=60.0) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        await trio.sleep(20)
        await r.manager.on_event(
            "mock", event(WebhookKind.ANSWERED, call.provider_call_id or "", call_id=call.id)
        )
        await trio.sleep(59)  # 79 s after creation, 59 s after the answer
        assert call.id in r.manager.calls
        await trio.sleep(2)
        stored = await r.store.get(call.id)
        assert stored is not None
        assert stored.end_reason is EndReason.TIMEOUT
        assert stored.answered_at == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=20)


async def test_the_first_live_signal_starts_max_duration_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, ring_timeout=30.0, max_duration=60.0) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        await trio.sleep(10)
        await r.manager.set_state(call.id, State.ACTIVE)  # a media stream started first
        await trio.sleep(50)
        assert call.id in r.manager.calls, "the ring timer is off once the call is live"
        await trio.sleep(11)
        assert call.id not in r.manager.calls


async def test_a_failed_hangup_is_logged_and_retried_until_it_succeeds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        r.carrier.fail_hangups = 3
        ended = await r.manager.hangup(call.id)
        assert ended.end_reason is EndReason.HANGUP_BOT
        assert ended.metadata["hangup_owed"] is True
        await trio.sleep(60)
        assert r.carrier.hangups == [call.id] * 4
        failures = [
            rec
            for rec in caplog.records
            if rec.getMessage() == "carrier hang-up failed; will retry"
        ]
        assert len(failures) == 3
        assert all(getattr(rec, "call_id", None) == call.id for rec in failures)
        assert all("503" in str(getattr(rec, "error", "")) for rec in failures)
        assert r.metrics.hangup_failures.get(provider="mock", retryable="true") == 3
        stored = await r.store.get(call.id)
        assert stored is not None
        assert "hangup_owed" not in stored.metadata
        assert "hangup_owed" not in (await r.manager.get(call.id)).metadata, "memory too"
        assert r.manager.owed_hangups == 0


async def test_owed_hangups_survive_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        r.carrier.fail_hangups = 100
        await r.manager.hangup(call.id)
        await trio.sleep(1)
    async with rig(tmp_path) as again:  # a new process: the store remembers the debt
        await trio.sleep(1)
        assert again.carrier.hangups == [call.id]
        stored = await again.store.get(call.id)
        assert stored is not None
        assert "hangup_owed" not in stored.metadata


async def test_only_one_hangup_in_flight_per_call(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        gate = trio.Event()
        in_flight = 0
        most = 0
        original = r.carrier.hangup

        async def slow_hangup(ended: Call) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await gate.wait()
            in_flight -= 1
            await original(ended)

        r.carrier.hangup = slow_hangup  # type: ignore[method-assign,assignment]
        await r.manager.hangup(call.id)
        r.manager._owe(await r.store.get(call.id) or call)  # a second wish to hang up the same call
        await trio.sleep(10)
        gate.set()
        await trio.sleep(1)
        assert most == 1
        assert r.carrier.hangups == [call.id]


async def test_a_carrier_id_already_anothers_fails_the_dial_and_leaves_that_call_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A carrier (or a stub) that answers every dial with one id: the second call fails
    (the API's 502), ended without that id, nothing hung up by it; it used to be a 500 and a
    call stuck open that no hang-up could end."""
    async with rig(tmp_path) as r:
        first = await r.manager.place("+15551234567", provider="mock")
        same_id = first.provider_call_id
        assert same_id is not None

        async def place_again(call: Call) -> str:
            r.carrier.placed.append(call)
            return same_id

        r.carrier.place = place_again  # type: ignore[method-assign]
        with pytest.raises(DialFailed) as failed:
            await r.manager.place("+15557654321", provider="mock")
        assert f"already call {first.id}'s" in str(failed.value)
        second = await r.store.get(failed.value.call.id)
        assert second is not None
        assert (second.state, second.end_reason, second.provider_call_id) == (
            State.ENDED,
            EndReason.FAILED,
            None,
        )
        assert r.manager.calls[first.id].provider_call_id == same_id
        assert (await r.store.find("mock", same_id)) == await r.store.get(first.id)
        await trio.sleep(5)  # a hang-up owed would be tried by now (the ring timeout is 30 s)
        assert r.carrier.hangups == []


async def test_inbound_policy_and_numbers_by_digits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, inbound_policy="allowlist", allow_from=["+14155550100"]) as r:
        allowed = await r.manager.on_event(
            "mock",
            event(
                WebhookKind.INITIATED,
                "CA" + "1" * 32,
                direction=Direction.INBOUND,
                from_number="14155550100",
                wants_instructions=True,
            ),
        )
        assert allowed.reply is Reply.STREAM
        refused = await r.manager.on_event(
            "mock",
            event(
                WebhookKind.INITIATED,
                "CA" + "2" * 32,
                direction=Direction.INBOUND,
                from_number="+14155550101",
                wants_instructions=True,
            ),
        )
        assert refused.reply is Reply.REJECT
        rejected = await r.store.find("mock", "CA" + "2" * 32)
        assert rejected is not None
        assert (rejected.state, rejected.end_reason, rejected.metadata["rejected"]) == (
            State.ENDED,
            EndReason.HANGUP_BOT,
            "policy",
        )
        # the carrier asks again: still refused, no second registration, no REST hang-up
        again = await r.manager.on_event(
            "mock",
            event(
                WebhookKind.INITIATED,
                "CA" + "2" * 32,
                direction=Direction.INBOUND,
                wants_instructions=True,
            ),
        )
        assert again.reply is Reply.REJECT
        assert r.carrier.hangups == []
        page, _ = await r.store.list_calls(active=None, limit=10, cursor=None)
        assert len(page) == 2


@pytest.mark.parametrize("by_rest", [False, True], ids=["webhook-answer", "rest-hangup"])
async def test_an_inbound_call_first_seen_ending_is_not_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, by_rest: bool
) -> None:
    """Its first webhook says the caller is gone (before or during our answer): the policy
    has nothing to refuse, so nobody is hung up (by REST, for Telnyx) and the record keeps the
    carrier's reason, not ``hangup-bot``."""
    async with rig(tmp_path, inbound_policy="disabled") as r:
        r.carrier.instructs_by_rest = by_rest
        answer = await r.manager.on_event(
            "mock",
            event(
                WebhookKind.ENDED,
                direction=Direction.INBOUND,
                from_number="+14155550101",
                end_reason=EndReason.NO_ANSWER,
            ),
        )
        assert answer.reply is Reply.ACK
        await trio.sleep(60)  # any hang-up owed would be tried by now
        stored = await r.store.find("mock", "CA" + "9" * 32)
        assert stored is not None
        assert (stored.state, stored.end_reason) == (State.ENDED, EndReason.NO_ANSWER)
        assert "rejected" not in stored.metadata
        assert "hangup_owed" not in stored.metadata
        assert r.carrier.hangups == []


async def test_inbound_calls_at_capacity_are_refused_busy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, inbound_policy="open", max_concurrent=1) as r:
        await r.manager.place("+15551234567", provider="mock")
        answer = await r.manager.on_event(
            "mock",
            event(
                WebhookKind.INITIATED,
                direction=Direction.INBOUND,
                from_number="+14155550100",
                wants_instructions=True,
            ),
        )
        assert answer.reply is Reply.REJECT
        stored = await r.store.find("mock", "CA" + "9" * 32)
        assert stored is not None
        assert (stored.end_reason, stored.metadata["rejected"]) == (EndReason.BUSY, "capacity")


async def test_concurrent_first_webhooks_register_one_call(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r, trio.open_nursery() as nursery:
        for kind in (WebhookKind.INITIATED, WebhookKind.RINGING, WebhookKind.ANSWERED):
            nursery.start_soon(
                r.manager.on_event, "mock", event(kind, direction=Direction.OUTBOUND_API)
            )
    page, _ = await r.store.list_calls(active=None, limit=10, cursor=None)
    assert [(c.direction, c.state) for c in page] == [(Direction.OUTBOUND_API, State.ANSWERED)]


async def test_the_carriers_real_id_replaces_a_request_id(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        request_id = call.provider_call_id or ""
        # a carrier that calls back with its call id and the request id it gave at dial (Plivo)
        await r.manager.on_event(
            "mock",
            event(
                WebhookKind.ANSWERED, "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a", request_id=request_id
            ),
        )
        current = r.manager.calls[call.id]
        assert current.provider_call_id == "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a"
        assert current.metadata["request_id"] == request_id
        assert current.state is State.ANSWERED
        assert current.direction is Direction.OUTBOUND


async def test_stream_tokens_are_single_use_and_expire(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock", mode=Mode.CONVERSATION)
        token = r.manager.issue_token(call.id)
        assert len(token) == 32 and token.isalnum()
        redeemed = r.manager.redeem_token(token)
        assert redeemed is not None and redeemed.id == call.id
        assert r.manager.redeem_token(token) is None
        assert r.manager.redeem_token("0" * 32) is None
        late = r.manager.issue_token(call.id)
        await trio.sleep(301)
        assert r.manager.redeem_token(late) is None


async def test_out_of_order_callbacks_never_move_backwards(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        call = await r.manager.place("+15551234567", provider="mock")
        sid = call.provider_call_id or ""
        await r.manager.on_event(
            "mock", event(WebhookKind.ENDED, sid, call_id=call.id, end_reason=EndReason.BUSY)
        )
        await r.manager.on_event("mock", event(WebhookKind.RINGING, sid, call_id=call.id))
        await r.manager.on_event("mock", event(WebhookKind.ANSWERED, sid, call_id=call.id))
        stored = await r.store.get(call.id)
        assert stored is not None
        assert (stored.state, stored.end_reason) == (State.ENDED, EndReason.BUSY)


@pytest.mark.parametrize("first_fails", [False, True])
async def test_a_copy_of_a_webhook_being_applied_waits_for_the_first(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    first_fails: bool,
) -> None:
    """Answered before the first is durable, a copy would tell the carrier the event is safe
    when a crash could still lose it; if the first fails, the copy is applied instead."""
    async with rig(tmp_path) as r, trio.open_nursery() as nursery:
        gate = trio.Event()
        write = r.store.write

        async def slow_write(*args: object, **kwargs: object) -> object:
            await gate.wait()
            if first_fails:
                raise StoreError("disk full")
            return await write(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(r.store, "write", slow_write)
        ringing = event(WebhookKind.RINGING, direction=Direction.OUTBOUND_API)

        async def first() -> None:
            with contextlib.suppress(StoreError):
                await r.manager.on_event("mock", ringing, "key-1")

        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        answers: list[bool] = []

        async def copy() -> None:
            answers.append(await r.manager.replayed("key-1"))

        nursery.start_soon(copy)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [], "no answer while the first is not durable"
        gate.set()
    assert answers == [not first_fails]
