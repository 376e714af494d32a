"""Restart reconciliation (SPEC §7), table-driven, for every carrier, over real HTTP.

Each test starts from a store as a crashed daemon left it, starts the manager and the reconciler
in the runtime's order, and asks the fake carriers' REST surface (127.0.0.1, port 0) through the
real Twilio, Plivo and Telnyx clients (and the mock carrier). Time is a mock clock that jumps
once every task has been idle for 50 ms, so carrier timeouts, backoff, ring and max-duration
timers cost virtual seconds while loopback requests still get real time to be answered.

The restart happens at virtual time 0; records are dated relative to it. Settings throughout:
``ring_timeout = 30``, ``max_duration = 300``, ``stream_grace = 2``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
import trio
import trio.testing

from tests.calls.support import (
    LOOKUP,
    PROVIDERS,
    REST_PROVIDERS,
    Rig,
    at_carrier,
    messages,
    record,
    rig,
    unknown_at_carrier,
)
from voicecalld.calls.model import Call, EndReason, EventType, Mode, NewEvent, State
from voicecalld.calls.reconcile import UNREACHABLE_AFTER, Outcome
from voicecalld.carriers.base import WebhookEvent, WebhookKind
from voicecalld.sim.faults import Fault
from voicecalld.sim.rest import serve_fake_carriers
from voicecalld.sim.state import SimStatus
from voicecalld.store.sqlite import SqliteStore
from voicecalld.testing import make_config, running

SETTINGS = {"ring_timeout": 30.0, "max_duration": 300.0, "stream_grace": 2.0}
OPEN = "open"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def carrier_reason(provider: str, status: SimStatus) -> str:
    """The end reason each carrier's status lookup gives for a call that ended with ``status``.

    Telnyx's call resource says only ``is_alive``, and the mock only whether it still plays the
    call: for both, any ended call reads ``completed``.
    """
    if provider in ("telnyx", "mock"):
        return "completed"
    return status.value


Arrange = Callable[[Rig, str], Awaitable[Call]]


@attrs.frozen
class Row:
    """One line of the table in ``voicecalld/calls/reconcile.py``, per carrier."""

    name: str
    arrange: Arrange
    outcome: Callable[[str], Outcome]
    after_pass: Callable[[str], str]
    """``"open"``, or the end reason right after the first pass."""
    then: Callable[[str], tuple[float, str] | None] = lambda provider: None
    """When (virtual seconds) and why a timer ends a call the pass left open."""
    hung_up: bool = False
    """Whether voicecalld hangs the call up at the carrier (at once or when its timer ends it)."""


T = TypeVar("T")


def same(value: T) -> Callable[[str], T]:
    """The same for every carrier."""
    return lambda provider: value


def not_answered(age: float = 10.0) -> Callable[[str], tuple[float, str]]:
    """A live call not answered in our records, placed ``age`` s before the restart: its ring
    timer runs on; but Telnyx cannot say whether it was answered meanwhile, so for Telnyx only
    max duration (from its creation) bounds it, and the carrier's own ring timeout (given at
    the dial) ends it if nobody answered."""
    return lambda provider: (
        (300.0 - age, "timeout") if provider == "telnyx" else (30.0 - age, "timeout")
    )


def answered_while_down(provider: str) -> tuple[float, str]:
    # Twilio and Plivo say the call was answered: restored answered, its stream (gone with the
    # old process) gets the grace; the mock says it was not (its ring timer runs), Telnyx does
    # not say (see not_answered).
    return (2.0, "stream-lost") if provider in ("twilio", "plivo") else not_answered()(provider)


def ended_at_carrier(status: SimStatus) -> Row:
    async def arrange(made: Rig, provider: str) -> Call:
        return await at_carrier(made, provider, status)

    return Row(
        f"ended {status.value} at the carrier",
        arrange,
        same(Outcome.ENDED),
        lambda provider: carrier_reason(provider, status),
    )


async def _ringing(made: Rig, provider: str) -> Call:
    return await at_carrier(made, provider, SimStatus.RINGING)


async def _queued(made: Rig, provider: str) -> Call:
    return await at_carrier(
        made, provider, SimStatus.QUEUED, state=State.INITIATED, heard_from=False
    )


async def _answered(made: Rig, provider: str) -> Call:
    return await at_carrier(made, provider, SimStatus.IN_PROGRESS, answered_age=5.0)


async def _answered_notify(made: Rig, provider: str) -> Call:
    return await at_carrier(
        made,
        provider,
        SimStatus.IN_PROGRESS,
        answered_age=5.0,
        state=State.ANSWERED,
        mode=Mode.NOTIFY,
    )


async def _answered_while_down(made: Rig, provider: str) -> Call:
    return await at_carrier(made, provider, SimStatus.IN_PROGRESS)


async def _answered_while_down_notify(made: Rig, provider: str) -> Call:
    return await at_carrier(made, provider, SimStatus.IN_PROGRESS, age=25.0, mode=Mode.NOTIFY)


def answered_while_down_notify(provider: str) -> tuple[float, str]:
    # Placed 25 s before the restart and answered at a moment nobody says: the max duration
    # counts from the call's creation (300 - 25 s), never from the restart. The mock says it
    # was not answered: its ring timer has 5 s left. Telnyx does not say (see not_answered).
    return (5.0, "timeout") if provider == "mock" else (275.0, "timeout")


async def _answered_unseen_restored_before(made: Rig, provider: str) -> Call:
    # restored once already (10 s ago) with an answer voicecalld never saw, 280 s after it was
    # placed: the max duration still counts from its creation, not from that restore
    return await at_carrier(
        made,
        provider,
        SimStatus.IN_PROGRESS,
        age=280.0,
        answered_age=10.0,
        state=State.ANSWERED,
        mode=Mode.NOTIFY,
        metadata={"answered_unseen": True},
    )


async def _unknown(made: Rig, provider: str) -> Call:
    return unknown_at_carrier(provider)


async def _never_reached(made: Rig, provider: str) -> Call:
    return record(provider, None, state=State.INITIATED)


async def _overdue(made: Rig, provider: str) -> Call:
    return await at_carrier(made, provider, SimStatus.IN_PROGRESS, age=400.0, answered_age=301.0)


ANSWERING = [
    Row(
        "ringing",
        _ringing,
        same(Outcome.RESTORED),
        same(OPEN),
        not_answered(),
        hung_up=True,
    ),
    Row(
        "queued, known only by what placing it returned",
        _queued,
        same(Outcome.RESTORED),
        same(OPEN),
        not_answered(),
        hung_up=True,
    ),
    Row(
        "answered, streaming",
        _answered,
        same(Outcome.RESTORED),
        same(OPEN),
        same((2.0, "stream-lost")),
        hung_up=True,
    ),
    Row(
        "answered, notify mode",
        _answered_notify,
        same(Outcome.RESTORED),
        same(OPEN),
        same((295.0, "timeout")),
        hung_up=True,
    ),
    Row(
        "answered while voicecalld was down",
        _answered_while_down,
        same(Outcome.RESTORED),
        same(OPEN),
        answered_while_down,
        hung_up=True,
    ),
    Row(
        "answered while voicecalld was down, notify mode",
        _answered_while_down_notify,
        same(Outcome.RESTORED),
        same(OPEN),
        answered_while_down_notify,
        hung_up=True,
    ),
    Row(
        "answered unseen, restored before",
        _answered_unseen_restored_before,
        same(Outcome.RESTORED),
        same(OPEN),
        same((20.0, "timeout")),
        hung_up=True,
    ),
    *(
        ended_at_carrier(status)
        for status in (
            SimStatus.COMPLETED,
            SimStatus.BUSY,
            SimStatus.NO_ANSWER,
            SimStatus.FAILED,
            SimStatus.CANCELED,
        )
    ),
    Row(
        "unknown to the carrier (404)",
        _unknown,
        same(Outcome.ENDED),
        same("completed"),
    ),
    Row(
        "never reached the carrier",
        _never_reached,
        same(Outcome.LOST),
        same("lost"),
    ),
    Row(
        "older than max_duration",
        _overdue,
        same(Outcome.TIMEOUT),
        same("timeout"),
        hung_up=True,
    ),
]
CHECKPOINTS = (1.0, 3.0, 19.0, 21.0, 274.0, 276.0, 294.0, 296.0)


async def status_of(made: Rig, call_id: str) -> str:
    """``"open"`` or the end reason. Memory first: a call ends there before its durable write
    lands (a store thread may still be at it when the mock clock has moved on)."""
    if call_id in made.running.calls:
        assert not (await made.stored(call_id)).ended
        return OPEN
    stored = await made.stored(call_id)
    while not stored.ended:
        await trio.sleep(0.01)
        stored = await made.stored(call_id)
    return str(stored.end_reason)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_outcome_when_the_carrier_answers(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    caplog.set_level("INFO", logger="voicecalld")
    async with rig(tmp_path, **SETTINGS) as made:
        calls = {row.name: await row.arrange(made, provider) for row in ANSWERING}
        await made.save(*calls.values())
        await made.start()
        await made.reconcile()
        assert trio.current_time() < 1.0, "the first pass waits for no timer"

        logged = {r.call_id: r.outcome for r in messages(caplog, "reconciled")}  # type: ignore[attr-defined]
        outcomes = {name: logged.get(call.id) for name, call in calls.items()}
        assert outcomes == {row.name: row.outcome(provider).value for row in ANSWERING}
        after = {name: await status_of(made, call.id) for name, call in calls.items()}
        assert after == {row.name: row.after_pass(provider) for row in ANSWERING}
        counted = Counter(outcomes.values())
        assert {k: made.metrics.reconcile.get(outcome=k) for k in counted} == counted
        [summary] = messages(caplog, "first pass done")
        assert summary.calls == len(ANSWERING)  # type: ignore[attr-defined]
        assert {k: getattr(summary, k) for k in counted} == counted

        for checkpoint in CHECKPOINTS:  # the re-armed timers, for the time each call had left
            await trio.sleep_until(checkpoint)
            now = {name: await status_of(made, call.id) for name, call in calls.items()}
            expected = {}
            for row in ANSWERING:
                then = row.then(provider)
                ends = then is not None and then[0] <= checkpoint
                expected[row.name] = then[1] if ends and then else row.after_pass(provider)
            assert now == expected, f"at {checkpoint} s"

        await trio.sleep(30.0)  # owed hang-ups are paid
        assert made.running.owed_hangups == 0
        hung_up = {name: await made.hung_up(provider, call) for name, call in calls.items()}
        expected_hangups = {row.name: row.hung_up for row in ANSWERING}
        expected_hangups["never reached the carrier"] = False
        assert hung_up == expected_hangups


async def test_an_answer_unseen_is_marked_so_the_next_restart_counts_from_the_creation(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, **SETTINGS) as made:
        call = await _answered_while_down_notify(made, "twilio")
        await made.save(call)
        await made.start()
        await made.reconcile()
        stored = await made.stored(call.id)
        assert stored.answered_at is not None, "answered: the carrier says so"
        assert stored.metadata["answered_unseen"] is True
        assert stored.max_duration_from == call.created_at


@pytest.mark.parametrize(
    ("provider", "state"),
    [("twilio", "ringing"), ("plivo", "ringing"), ("telnyx", "initiated"), ("mock", "initiated")],
)
async def test_a_call_that_started_ringing_while_voicecalld_was_down_is_restored_ringing(
    tmp_path: Path, clock: trio.testing.MockClock, provider: str, state: str
) -> None:
    # Telnyx's call resource and the mock say only whether the call is alive
    async with rig(tmp_path, **SETTINGS) as made:
        call = await at_carrier(made, provider, SimStatus.RINGING, state=State.INITIATED)
        await made.save(call)
        await made.start()
        await made.reconcile()
        assert (await made.stored(call.id)).state.value == state
        assert made.running.calls[call.id].state.value == state


async def test_a_stream_cut_by_the_restart_gets_its_stream_stopped(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Its ``stream.started`` an app has seen is paired with a ``stream.stopped`` at the next
    start; one that stopped cleanly before is not stopped twice."""
    async with rig(tmp_path, **SETTINGS) as made:
        cut = await at_carrier(made, "twilio", SimStatus.IN_PROGRESS, answered_age=5.0)
        clean = await at_carrier(made, "twilio", SimStatus.IN_PROGRESS, answered_age=5.0)
        await made.save(cut, clean)
        await made.store.write(
            [],
            [
                NewEvent(EventType.STREAM_STARTED, cut, {}),
                NewEvent(EventType.STREAM_STARTED, clean, {}),
                NewEvent(EventType.STREAM_STOPPED, clean, {"reason": "carrier stopped"}),
            ],
        )
        await made.start()
        stored = await made.store.events_after(0, 100)
        stops = [
            (e.call.id, e.data["reason"]) for e in stored if e.type is EventType.STREAM_STOPPED
        ]
        assert stops == [(clean.id, "carrier stopped"), (cut.id, "voicecalld restarted")]


FAILURES: dict[str, Fault | None] = {
    "500": Fault(status=500, times=None),
    "timeout": Fault(delay=3600.0, times=None),
    "connection refused": None,  # the carrier's api_base_url is a closed port
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("provider", REST_PROVIDERS)
async def test_a_carrier_that_fails_keeps_the_call_with_its_timers_running(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    failure: str,
) -> None:
    caplog.set_level("INFO", logger="voicecalld")
    async with rig(tmp_path, **SETTINGS) as made:
        fault = FAILURES[failure]
        if fault is None:
            made.carriers[provider] = made.carrier(provider, refused=True)
        else:
            made.sim.arm(LOOKUP[provider], fault)
        calls = {
            # ring timer due at 20 s, armed once the carrier has failed to answer
            "ringing": await at_carrier(made, provider, SimStatus.RINGING),
            # max duration due at 5 s, before a lookup can time out: armed before it is asked
            "near max duration": await at_carrier(
                made,
                provider,
                SimStatus.IN_PROGRESS,
                age=300.0,
                answered_age=295.0,
                state=State.ANSWERED,
                mode=Mode.NOTIFY,
            ),
            # streaming before the restart: its stream grace starts when the carrier fails
            "streaming": await at_carrier(made, provider, SimStatus.IN_PROGRESS, answered_age=5.0),
            # no timer due for minutes: settled once the carrier answers again
            "notify": await at_carrier(
                made,
                provider,
                SimStatus.IN_PROGRESS,
                answered_age=5.0,
                state=State.ANSWERED,
                mode=Mode.NOTIFY,
            ),
        }
        ids = {call.id: name for name, call in calls.items()}
        await made.save(*calls.values())
        await made.start()
        await made.reconcile()
        first_failure = trio.current_time()  # the first pass ends when every lookup has failed
        assert first_failure < 40.0

        async def states() -> dict[str, str]:
            return {name: await status_of(made, call.id) for name, call in calls.items()}

        retries = [r for r in messages(caplog, "reconciled") if r.outcome == "retry"]  # type: ignore[attr-defined]
        assert {ids[r.call_id] for r in retries} >= {"ringing", "streaming", "notify"}  # type: ignore[attr-defined]
        assert all(r.levelname == "WARNING" and r.error for r in retries)  # type: ignore[attr-defined]

        await trio.sleep_until(6.0)
        assert (await states())["near max duration"] == "timeout", "past max duration: ended"
        await trio.sleep_until(max(21.0, first_failure + 3.0))
        assert await states() == {
            "ringing": "timeout",
            "near max duration": "timeout",
            "streaming": "stream-lost",
            "notify": OPEN,
        }

        # the carrier comes back, and says the notify call has ended meanwhile
        recovery = max(30.0, trio.current_time())
        await trio.sleep_until(recovery)
        made.sim.disarm()
        made.carriers[provider] = made.carrier(provider)
        notify_at_carrier = made.sim_call(calls["notify"])
        assert notify_at_carrier is not None
        notify_at_carrier.set_status(SimStatus.COMPLETED)
        await trio.sleep_until(recovery + 70.0)
        assert (await states())["notify"] == "completed"

        asked = [
            r.retry_in_s  # type: ignore[attr-defined]
            for r in messages(caplog, "reconciled")
            if r.call_id == calls["notify"].id and r.outcome == "retry"  # type: ignore[attr-defined]
        ]
        # (a timeout costs ~31 s of attempts: asked once more by the time it recovers)
        assert len(asked) >= (1 if failure == "timeout" else 3), "asked again while it failed"
        assert asked == sorted(asked) and (len(asked) == 1 or asked[0] < asked[-1]), "backoff"
        assert made.running.owed_hangups == 0
        for name in ("ringing", "near max duration", "streaming"):
            assert await made.hung_up(provider, calls[name]), f"{name}: the owed hang-up is paid"
        if failure == "connection refused":
            failed = messages(caplog, "carrier hang-up failed; will retry")
            assert failed and all(r.call_id in ids and r.error for r in failed)  # type: ignore[attr-defined]


async def test_lookups_are_bounded_by_reconcile_concurrency(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, reconcile_concurrency=4) as made:
        made.sim.arm(LOOKUP["twilio"], Fault(delay=1.0, times=None))
        calls = [await at_carrier(made, "twilio", SimStatus.RINGING) for _ in range(40)]
        await made.save(*calls)
        await made.start()
        await made.reconcile()
        assert made.sim.peak_total == 4
        assert 10.0 <= trio.current_time() < 12.0, "40 lookups of 1 s, 4 at a time"
        assert made.metrics.reconcile.get(outcome="restored") == 40


async def test_an_unreachable_carrier_holds_the_first_pass_for_one_round_not_one_per_call(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="voicecalld")
    async with rig(tmp_path, reconcile_concurrency=8) as made:
        made.sim.arm(LOOKUP["twilio"], Fault(delay=3600.0, times=None))
        calls = [await at_carrier(made, "twilio", SimStatus.RINGING) for _ in range(100)]
        mock_call = await at_carrier(
            made, "mock", SimStatus.IN_PROGRESS, answered_age=5.0, mode=Mode.NOTIFY
        )
        await made.save(*calls, mock_call)
        await made.start()
        await made.reconcile()
        # 100 calls x a 10 s timeout / 8 would be 2 minutes; here: one round of 8 lookups, and
        # the (UNREACHABLE_AFTER - 1) that workers freed by the first failures start before it
        # trips
        assert trio.current_time() < 2 * 10.0 + 1.0
        lookups = made.sim.requests_to(LOOKUP["twilio"])
        assert len(lookups) <= 8 + UNREACHABLE_AFTER - 1
        kept = {r.call_id for r in messages(caplog, "reconciled") if r.outcome == "retry"}  # type: ignore[attr-defined]
        assert kept == {call.id for call in calls}, "every call kept, each logged"
        assert mock_call.id in made.running.calls, "another carrier's calls are settled"
        assert made.metrics.reconcile.get(outcome="restored") == 1

        made.sim.disarm()
        await trio.sleep(120.0)  # past the ring timeouts: ended, hung up (Twilio is back)
        assert not any(call.id in made.running.calls for call in calls)
        assert made.running.owed_hangups == 0


async def test_one_failing_call_does_not_stop_the_others(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as made:
        calls = [await at_carrier(made, "twilio", SimStatus.COMPLETED) for _ in range(30)]
        broken = calls[0]
        assert broken.provider_call_id is not None
        made.sim.broken.add(broken.provider_call_id)
        await made.save(*calls)
        await made.start()
        await made.reconcile()
        assert made.metrics.reconcile.get(outcome="ended") == 29
        assert made.running.calls.keys() == {broken.id}


async def test_webhooks_during_reconciliation_are_applied_and_win(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that arrives while its call's lookup is in flight is newer than the answer."""
    caplog.set_level("INFO", logger="voicecalld")
    async with rig(tmp_path, **SETTINGS) as made:
        made.sim.arm(LOOKUP["twilio"], Fault(delay=5.0, times=None))  # answers, but late
        hung_up_meanwhile = await at_carrier(made, "twilio", SimStatus.RINGING)
        answered_meanwhile = await at_carrier(made, "twilio", SimStatus.RINGING, mode=Mode.NOTIFY)
        await made.save(hung_up_meanwhile, answered_meanwhile)
        manager = await made.start()

        async def webhooks() -> None:
            await trio.sleep(1.0)  # lookups in flight
            for call, kind, reason in (
                (hung_up_meanwhile, WebhookKind.ENDED, EndReason.BUSY),
                (answered_meanwhile, WebhookKind.ANSWERED, None),
            ):
                assert call.provider_call_id is not None
                event = WebhookEvent(
                    kind, call.provider_call_id, call_id=call.id, end_reason=reason
                )
                await manager.on_event("twilio", event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(webhooks)
            await made.reconcile()  # the lookups answer "ringing" at 5 s: stale news

        assert (await made.stored(hung_up_meanwhile.id)).end_reason == "busy"
        assert hung_up_meanwhile.id not in manager.calls, "not restored by the stale answer"
        answered = manager.calls[answered_meanwhile.id]
        assert answered.state is State.ANSWERED
        outcomes = {r.call_id: r.outcome for r in messages(caplog, "reconciled")}  # type: ignore[attr-defined]
        assert outcomes[hung_up_meanwhile.id] == "gone"
        assert outcomes[answered_meanwhile.id] == "restored"
        await trio.sleep_until(25.0)  # its ring timer (due at 20 s) was not re-armed
        assert answered_meanwhile.id in manager.calls


async def test_restart_in_process_frees_the_slots_and_reports_in_metrics(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The whole daemon: phantoms from the store are settled before it is ready, /metrics
    counts each outcome, and the slots they held take new calls."""
    async with serve_fake_carriers() as sim:
        async with SqliteStore.open(tmp_path) as store:
            busy_call = sim.add_call("twilio", from_number="+14155550100", to="+14155550199")
            busy_call.set_status(SimStatus.BUSY)
            now = datetime.now(UTC)
            phantoms = [
                record("twilio", busy_call.carrier_id, now=now),
                record("twilio", None, state=State.INITIATED, now=now),
            ]
            await store.write(phantoms)
        config = make_config(
            tmp_path,
            server={"public_url": "https://voice.example.com"},
            calls={"max_concurrent": 2},
            providers={"twilio": attrs.asdict(sim.twilio_config())},
        )
        async with running(config) as daemon:
            for phantom, reason in zip(phantoms, ("busy", "lost"), strict=True):
                answer = await daemon.api.get(f"/v1/calls/{phantom.id}")
                assert answer.json()["end_reason"] == reason
            metrics = (await daemon.api.get("/metrics")).text
            assert 'voicecalld_reconcile_total{outcome="ended"} 1' in metrics
            assert 'voicecalld_reconcile_total{outcome="lost"} 1' in metrics
            for to in ("+14155550123", "+14155550124"):
                placed = await daemon.api.post("/v1/calls", json={"to": to})
                assert placed.status_code == 201, placed.text
            refused = await daemon.api.post("/v1/calls", json={"to": "+14155550125"})
            assert refused.status_code == 429, "both slots taken by new calls, none by phantoms"
