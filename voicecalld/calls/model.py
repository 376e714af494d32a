"""What a call is (SPEC §6): its record, directions, states, end reasons and events.

Pure data, no I/O. A :class:`Call` is immutable; every change is a new value made by
:mod:`voicecalld.calls.machine`, so a record handed to the store, an API answer or an event
subscriber can never change under its reader.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import attrs

__all__ = [
    "ACTIVE_STATES",
    "Call",
    "Direction",
    "EndReason",
    "EventType",
    "Mode",
    "NewEvent",
    "State",
    "StoredEvent",
    "format_time",
    "new_call_id",
    "parse_time",
]


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    """Placed by voicecalld."""
    OUTBOUND_API = "outbound-api"
    """Placed directly through the carrier's API and pointed at our webhook."""


class State(StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"
    LISTENING = "listening"
    ENDED = "ended"


ACTIVE_STATES = frozenset({State.ANSWERED, State.ACTIVE, State.SPEAKING, State.LISTENING})
"""States of a call that was answered and has not ended: the reaper never touches these."""


class EndReason(StrEnum):
    COMPLETED = "completed"
    HANGUP_USER = "hangup-user"
    HANGUP_BOT = "hangup-bot"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"
    VOICEMAIL = "voicemail"
    TIMEOUT = "timeout"
    STREAM_LOST = "stream-lost"
    STALE = "stale"
    LOST = "lost"
    ERROR = "error"


class Mode(StrEnum):
    NOTIFY = "notify"
    """Say the message, then hang up."""
    CONVERSATION = "conversation"
    """Stay on the line; audio goes to the bridge."""


class EventType(StrEnum):
    CREATED = "call.created"
    RINGING = "call.ringing"
    ANSWERED = "call.answered"
    STATE = "call.state"
    ENDED = "call.ended"
    DTMF = "call.dtmf"
    STREAM_STARTED = "stream.started"
    STREAM_STOPPED = "stream.stopped"


def new_call_id() -> str:
    """A call id: ``c_`` and 24 hex digits; safe in URLs, carrier client state and logs."""
    return "c_" + secrets.token_hex(12)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``, as the API shows every time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@attrs.frozen
class Call:
    id: str
    provider: str
    direction: Direction
    from_number: str
    to: str
    created_at: datetime
    updated_at: datetime
    provider_call_id: str | None = None
    state: State = State.INITIATED
    end_reason: EndReason | None = None
    mode: Mode = Mode.CONVERSATION
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    """Free-form JSON: the message to speak, a per-call ``bridge_url``, carrier details."""

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    @property
    def max_duration_from(self) -> datetime:
        """When ``calls.max_duration`` starts counting: the answer; the creation for a call not
        answered, or answered while voicecalld was down (``metadata.answered_unseen``: the
        moment is unknown, and the creation is the earliest it can have been)."""
        if self.answered_at is None or self.metadata.get("answered_unseen"):
            return self.created_at
        return self.answered_at

    def to_json(self) -> dict[str, Any]:
        """The call as the API and events show it (SPEC §6)."""

        def when(moment: datetime | None) -> str | None:
            return None if moment is None else format_time(moment)

        return {
            "id": self.id,
            "provider": self.provider,
            "provider_call_id": self.provider_call_id,
            "direction": self.direction.value,
            "from": self.from_number,
            "to": self.to,
            "state": self.state.value,
            "end_reason": None if self.end_reason is None else self.end_reason.value,
            "mode": self.mode.value,
            "created_at": when(self.created_at),
            "answered_at": when(self.answered_at),
            "ended_at": when(self.ended_at),
            "updated_at": when(self.updated_at),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Call:
        """The inverse of :meth:`to_json` (the store keeps calls in this form)."""

        def when(text: str | None) -> datetime | None:
            return None if text is None else parse_time(text)

        end_reason = data["end_reason"]
        return cls(
            id=data["id"],
            provider=data["provider"],
            provider_call_id=data["provider_call_id"],
            direction=Direction(data["direction"]),
            from_number=data["from"],
            to=data["to"],
            state=State(data["state"]),
            end_reason=None if end_reason is None else EndReason(end_reason),
            mode=Mode(data["mode"]),
            created_at=parse_time(data["created_at"]),
            answered_at=when(data["answered_at"]),
            ended_at=when(data["ended_at"]),
            updated_at=parse_time(data["updated_at"]),
            metadata=dict(data.get("metadata") or {}),
        )


@attrs.frozen
class NewEvent:
    """An event not yet in the store: the store gives it its id when it commits."""

    type: EventType
    call: Call
    data: Mapping[str, Any] = attrs.field(factory=dict)
    """Extra fields beside ``type`` and ``call`` (``digit`` for DTMF, ``from``/``to`` states)."""


@attrs.frozen
class StoredEvent:
    """An event as committed: ``id`` increases by commit order and is never reused."""

    id: int
    type: EventType
    call: Call
    at: datetime
    data: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``data:`` of a server-sent event (SPEC §5)."""
        return {"type": self.type.value, "call": self.call.to_json(), **self.data}
