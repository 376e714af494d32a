"""The reaper (SPEC §7): calls never answered within ``stale_after`` end ``stale``; answered
ones are never touched; the hang-up it owes reaches every carrier, one at a time per call, and a
failure is logged and retried.

The manager, the reaper and the carriers are the real ones (the carriers over HTTP to the fake
carriers on 127.0.0.1); time is a mock clock that jumps once every task has been idle for 50 ms.
Calls are adopted with their timers disarmed, so only the reaper can end them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from tests.calls.support import (
    PROVIDERS,
    REST_PROVIDERS,
    T0,
    Rig,
    at_carrier,
    hangup_endpoint,
    messages,
    record,
    rig,
)
from voicecalld.calls.model import Call, EndReason, State
from voicecalld.calls.reaper import stale
from voicecalld.sim.faults import Fault
from voicecalld.sim.state import SimStatus
from voicecalld.testing import make_config, running

REAPER = {"stale_after": 120.0, "reaper_interval": 30.0}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def adopt(made: Rig, *calls: Call) -> None:
    """Calls the manager holds as live (as restored), their timers left to nobody."""
    await made.save(*calls)
    for call in calls:
        made.running.adopt(call, arm=False)


ROWS: list[tuple[str, State, float | None, float, float | None]] = [
    # name, state, answered (seconds before t=0), created (seconds before t=0), reaped at
    ("initiated, new", State.INITIATED, None, 0.0, 120.0),  # stale at 120: the 4th sweep
    ("ringing, 100 s old", State.RINGING, None, 100.0, 30.0),  # stale at 20: the 1st sweep
    ("answered", State.ANSWERED, 900.0, 1000.0, None),
    ("active", State.ACTIVE, 900.0, 1000.0, None),
    ("speaking", State.SPEAKING, 900.0, 1000.0, None),
    ("listening", State.LISTENING, 900.0, 1000.0, None),
]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_reaps_only_calls_never_answered_and_hangs_them_up(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    caplog.set_level("INFO", logger="voicecalld")
    async with rig(tmp_path, **REAPER) as made:
        await made.start()
        calls = {}
        for name, state, answered, age, _ in ROWS:
            status = SimStatus.RINGING if answered is None else SimStatus.IN_PROGRESS
            calls[name] = await at_carrier(
                made, provider, status, age=age, answered_age=answered, state=state
            )
        await adopt(made, *calls.values())
        await made.reap()

        for checkpoint in (29.0, 31.0, 119.0, 121.0, 241.0):
            await trio.sleep_until(checkpoint)
            live = {name for name, call in calls.items() if call.id in made.running.calls}
            assert live == {
                name for name, *_, reaped in ROWS if reaped is None or reaped > checkpoint
            }, f"at {checkpoint} s"

        reaped = {name for name, *_, at in ROWS if at is not None}
        for name, call in calls.items():
            stored = await made.stored(call.id)
            assert stored.end_reason == (EndReason.STALE if name in reaped else None)
            assert await made.hung_up(provider, call) is (name in reaped), name
        assert made.metrics.reaped.get() == len(reaped)
        logged = {r.call_id for r in messages(caplog, "reaped stale call")}  # type: ignore[attr-defined]
        assert logged == {calls[name].id for name in reaped}
        assert made.running.owed_hangups == 0


@pytest.mark.parametrize("provider", REST_PROVIDERS)
async def test_a_failed_hangup_is_logged_and_retried_one_at_a_time(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    async with rig(tmp_path, stale_after=120.0, reaper_interval=2.0) as made:
        endpoint = hangup_endpoint(provider, answered=False)
        made.sim.arm(endpoint, Fault(delay=5.0, status=500, times=None))  # slow, then failing
        await made.start()
        call = await at_carrier(made, provider, SimStatus.RINGING, age=200.0)
        await adopt(made, call)
        await made.reap()

        # reaped at 2 s; attempts at 2, 9 and 18 s (5 s in flight, then 2 s, 4 s, 8 s of
        # backoff), with a sweep every 2 s meanwhile
        await trio.sleep_until(30.0)
        attempts = made.sim.requests_to(endpoint)
        assert len(attempts) >= 3, "retried"
        path = attempts[0].path
        assert made.sim.peak[path] == 1, "never two hang-ups in flight for one call"
        assert (await made.stored(call.id)).metadata.get("hangup_owed") is True
        assert [c.id for c in await made.store.calls_owing_hangup()] == [call.id]
        failed = messages(caplog, "carrier hang-up failed; will retry")
        assert len(failed) >= 3
        assert all(r.call_id == call.id and "500" in r.error for r in failed)  # type: ignore[attr-defined]
        assert made.metrics.hangup_failures.get(provider=provider, retryable="true") >= 3
        events = await made.store.events_after(0, 1000)
        assert [e.type.value for e in events].count("call.ended") == 1, "ended once"

        made.sim.disarm()
        await trio.sleep_until(40.0)
        assert made.running.owed_hangups == 0
        assert await made.hung_up(provider, call)
        assert "hangup_owed" not in (await made.stored(call.id)).metadata
        assert await made.store.calls_owing_hangup() == []


async def test_a_call_that_never_reached_the_carrier_just_ends(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, **REAPER) as made:
        await made.start()
        call = record("twilio", None, age=500.0, state=State.INITIATED)
        await adopt(made, call)
        await made.reap()
        await trio.sleep_until(31.0)
        assert (await made.stored(call.id)).end_reason is EndReason.STALE
        assert made.running.owed_hangups == 0
        assert made.sim.requests == [], "nothing to hang up"


async def test_stale_after_zero_disables_it_and_a_reload_applies_at_the_next_sweep(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path, stale_after=0.0, reaper_interval=30.0) as made:
        manager = await made.start()
        call = await at_carrier(made, "twilio", SimStatus.RINGING, age=10_000.0)
        await adopt(made, call)
        await made.reap()
        await trio.sleep_until(100.0)
        assert call.id in manager.calls
        manager.reconfigure(make_config(tmp_path, calls={"stale_after": 60.0}))
        await trio.sleep_until(121.0)
        assert (await made.stored(call.id)).end_reason is EndReason.STALE


async def test_a_reloaded_reaper_interval_counts_from_the_last_sweep_at_once(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # it used to apply only after the wait the old interval had begun
    async with rig(tmp_path, stale_after=60.0, reaper_interval=1000.0) as made:
        manager = await made.start()
        call = await at_carrier(made, "twilio", SimStatus.RINGING, age=10_000.0)
        await adopt(made, call)
        reaper = await made.reap()
        await trio.sleep_until(100.0)
        assert call.id in manager.calls
        manager.reconfigure(make_config(tmp_path, calls={"reaper_interval": 30.0}))
        reaper.reconfigure()  # as the runtime does on SIGHUP
        await trio.sleep_until(101.0)  # due at 30 s from the start: at once
        assert (await made.stored(call.id)).end_reason is EndReason.STALE


async def test_sighup_reaches_the_reaper(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    # stale at once: a call's age is wall time (the daemon's clock), its sweeps Trio's
    calls = {"stale_after": 0.001, "reaper_interval": 1000.0, "ring_timeout": 600.0}
    config = make_config(tmp_path, calls=calls, runtime={"drain_timeout": 0.0})
    async with running(config) as daemon:
        placed = await daemon.api.post("/v1/calls", json={"to": "+15551230408"})  # never answers
        call_id = placed.json()["id"]
        await trio.sleep(100.0)
        assert call_id in daemon.manager.calls
        assert await daemon.reload(make_config(tmp_path, calls={**calls, "reaper_interval": 30.0}))
        await trio.sleep(1.0)
        ended = (await daemon.api.get(f"/v1/calls/{call_id}")).json()
        assert ended["end_reason"] == "stale"


def test_stale_is_about_answering_not_age() -> None:
    assert stale(record("twilio", None, age=120.0, now=T0), T0, 120.0)
    assert not stale(record("twilio", None, age=119.0, now=T0), T0, 120.0)
    for state in (State.ANSWERED, State.ACTIVE, State.SPEAKING, State.LISTENING):
        answered = record("twilio", None, age=1000.0, answered_age=900.0, state=state, now=T0)
        assert not stale(answered, T0, 120.0), state
