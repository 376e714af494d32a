"""The call state machine (SPEC §6). Everything that decides a state change lives here.

Rules this module keeps, and the property tests check:

- states move forward only: ``initiated → ringing → answered → active → speaking ⇄ listening``,
  skipping ahead is allowed (a carrier may report ``answered`` without ``ringing``);
- ``speaking`` and ``listening`` alternate freely; they are one rank;
- ``ended`` absorbs everything: no change of any kind after it;
- ``end_reason`` is set exactly when the state is ``ended``, once, and never changes;
- ``answered_at`` is set the first time a call reaches ``answered`` or beyond.

It knows nothing of carriers, timers or storage: feed it a call and a wish, get the new call (or
``None`` when the wish changes nothing) and the events that describe the change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import attrs

from voicecalld.calls.model import Call, EndReason, EventType, NewEvent, State

__all__ = ["Transition", "advance", "end", "rank"]

_RANK: Final = {
    State.INITIATED: 0,
    State.RINGING: 1,
    State.ANSWERED: 2,
    State.ACTIVE: 3,
    State.SPEAKING: 4,
    State.LISTENING: 4,
    State.ENDED: 5,
}


def rank(state: State) -> int:
    """The order of ``state`` in the forward-only chain (speaking and listening share one)."""
    return _RANK[state]


@attrs.frozen
class Transition:
    """A change that happened: the call after it and the events to record."""

    call: Call
    events: tuple[NewEvent, ...]


def advance(call: Call, to: State, now: datetime) -> Transition | None:
    """Move ``call`` forward to ``to``; ``None`` if that would go backwards or change nothing.

    Use :func:`end` to end a call: ``to`` may not be ``ended``.
    """
    if to is State.ENDED:
        raise ValueError("use end() to end a call: it needs a reason")
    if call.state is State.ENDED or call.state is to:
        return None
    if rank(to) < rank(call.state) or (rank(to) == rank(call.state) and to not in _ALTERNATING):
        return None
    answered_at = call.answered_at
    if answered_at is None and rank(to) >= rank(State.ANSWERED):
        answered_at = now
    after = attrs.evolve(call, state=to, answered_at=answered_at, updated_at=now)
    change = {"from": call.state.value, "to": to.value}
    if to is State.RINGING:
        kind = EventType.RINGING
    elif to is State.ANSWERED:
        kind = EventType.ANSWERED
    else:
        kind = EventType.STATE
    return Transition(after, (NewEvent(kind, after, change),))


_ALTERNATING: Final = frozenset({State.SPEAKING, State.LISTENING})


def end(call: Call, reason: EndReason, now: datetime) -> Transition | None:
    """End ``call`` with ``reason``; ``None`` if it has already ended (the first reason stays)."""
    if call.state is State.ENDED:
        return None
    after = attrs.evolve(call, state=State.ENDED, end_reason=reason, ended_at=now, updated_at=now)
    change = {"from": call.state.value, "to": State.ENDED.value}
    return Transition(after, (NewEvent(EventType.ENDED, after, change),))
