"""The call state machine: hand-picked cases, then properties over random event sequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.calls import machine
from voicecalld.calls.model import Call, Direction, EndReason, EventType, State

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fresh() -> Call:
    return Call(
        id="c_1",
        provider="mock",
        direction=Direction.OUTBOUND,
        from_number="+15550000000",
        to="+15551234567",
        created_at=T0,
        updated_at=T0,
    )


def test_forward_moves_emit_the_matching_events() -> None:
    ringing = machine.advance(fresh(), State.RINGING, T0)
    assert ringing is not None
    assert ringing.call.state is State.RINGING
    assert [e.type for e in ringing.events] == [EventType.RINGING]
    answered = machine.advance(ringing.call, State.ANSWERED, T0 + timedelta(seconds=3))
    assert answered is not None
    assert answered.call.answered_at == T0 + timedelta(seconds=3)
    assert [e.type for e in answered.events] == [EventType.ANSWERED]
    active = machine.advance(answered.call, State.ACTIVE, T0)
    assert active is not None
    assert [e.type for e in active.events] == [EventType.STATE]
    assert active.events[0].data == {"from": "answered", "to": "active"}


def test_skipping_ahead_sets_answered_at() -> None:
    jumped = machine.advance(fresh(), State.ACTIVE, T0)
    assert jumped is not None
    assert jumped.call.answered_at == T0


def test_backward_and_same_state_are_refused() -> None:
    answered = machine.advance(fresh(), State.ANSWERED, T0)
    assert answered is not None
    assert machine.advance(answered.call, State.RINGING, T0) is None
    assert machine.advance(answered.call, State.ANSWERED, T0) is None


def test_speaking_and_listening_alternate() -> None:
    speaking = machine.advance(fresh(), State.SPEAKING, T0)
    assert speaking is not None
    listening = machine.advance(speaking.call, State.LISTENING, T0)
    assert listening is not None
    again = machine.advance(listening.call, State.SPEAKING, T0)
    assert again is not None and again.call.state is State.SPEAKING
    assert machine.advance(again.call, State.ACTIVE, T0) is None


def test_ended_absorbs_everything() -> None:
    ended = machine.end(fresh(), EndReason.BUSY, T0)
    assert ended is not None
    assert ended.call.end_reason is EndReason.BUSY
    assert ended.call.ended_at == T0
    assert [e.type for e in ended.events] == [EventType.ENDED]
    assert machine.end(ended.call, EndReason.COMPLETED, T0) is None
    for state in State:
        if state is not State.ENDED:
            assert machine.advance(ended.call, state, T0) is None


def test_ending_needs_end() -> None:
    with pytest.raises(ValueError, match="reason"):
        machine.advance(fresh(), State.ENDED, T0)


wishes = st.one_of(
    st.sampled_from([s for s in State if s is not State.ENDED]).map(lambda s: ("advance", s)),
    st.sampled_from(list(EndReason)).map(lambda r: ("end", r)),
)


@given(st.lists(wishes, max_size=30))
def test_random_sequences_keep_the_rules(sequence: list[tuple[str, object]]) -> None:
    call = fresh()
    reasons_seen: list[EndReason] = []
    for step, (kind, value) in enumerate(sequence):
        now = T0 + timedelta(seconds=step)
        before = call
        if kind == "advance":
            assert isinstance(value, State)
            change = machine.advance(call, value, now)
        else:
            assert isinstance(value, EndReason)
            change = machine.end(call, value, now)
        if change is None:
            continue
        call = change.call
        # never backward (speaking <-> listening share a rank), never out of ended
        assert machine.rank(call.state) >= machine.rank(before.state)
        assert before.state is not State.ENDED
        # end_reason exactly when ended
        assert (call.end_reason is not None) == (call.state is State.ENDED)
        if call.end_reason is not None:
            reasons_seen.append(call.end_reason)
        # answered_at, once set, never changes
        if before.answered_at is not None:
            assert call.answered_at == before.answered_at
        assert change.events and all(event.call == call for event in change.events)
    assert len(reasons_seen) <= 1


def test_call_json_round_trip() -> None:
    ended = machine.end(fresh(), EndReason.STREAM_LOST, T0 + timedelta(milliseconds=1500))
    assert ended is not None
    data = ended.call.to_json()
    assert data["from"] == "+15550000000"
    assert data["ended_at"] == "2026-01-01T00:00:01.500Z"
    assert data["end_reason"] == "stream-lost"
    assert Call.from_json(data) == ended.call
