"""Calls, events and a settable clock for the store's tests.

Times are whole milliseconds: the store keeps calls as JSON with millisecond times, so a call
read back equals the call written only if it had no finer digits.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from voicecalld.calls.model import Call, Direction, EndReason, EventType, NewEvent, State

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_call(
    n: int,
    *,
    created_at: datetime | None = None,
    provider: str = "mock",
    provider_call_id: str | None = "",
    state: State = State.INITIATED,
) -> Call:
    """Call number ``n``: ids derive from ``n``; created ``n`` seconds after T0 unless told."""
    created = T0 + timedelta(seconds=n) if created_at is None else created_at
    return Call(
        id=f"c_{n:024x}",
        provider=provider,
        direction=Direction.OUTBOUND,
        from_number="+15550000000",
        to="+15551230000",
        created_at=created,
        updated_at=created,
        provider_call_id=f"CA{n:032x}" if provider_call_id == "" else provider_call_id,
        state=state,
        metadata={"n": n, "message": "héllo"},
    )


def ended(call: Call, at: datetime, reason: EndReason = EndReason.COMPLETED) -> Call:
    return attrs.evolve(call, state=State.ENDED, end_reason=reason, ended_at=at, updated_at=at)


def created(call: Call) -> NewEvent:
    return NewEvent(EventType.CREATED, call)


class FakeClock:
    """The store's clock in tests: it says ``now`` until told otherwise."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
