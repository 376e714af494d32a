"""Fault injection for the simulator's REST surface: which endpoint misbehaves, and how.

A :class:`Fault` is armed on an :class:`Endpoint` and hits the next ``times`` requests to it
(``None``: every request until disarmed). ``after=False`` fails the request before it takes
effect (the carrier never did it); ``after=True`` lets it take effect and then fails the answer:
the ambiguous failure that must never make a client repeat a non-idempotent request. Pure data,
no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import attrs

__all__ = ["Endpoint", "Fault", "FaultBook"]


class Endpoint(StrEnum):
    TWILIO_CREATE = "twilio.create"
    TWILIO_FETCH = "twilio.fetch"
    TWILIO_UPDATE = "twilio.update"
    PLIVO_CREATE = "plivo.create"
    PLIVO_LIVE = "plivo.live"
    PLIVO_QUEUED = "plivo.queued"
    PLIVO_CDR = "plivo.cdr"
    PLIVO_HANGUP = "plivo.hangup"
    PLIVO_CANCEL = "plivo.cancel"
    PLIVO_SPEAK = "plivo.speak"
    PLIVO_DTMF = "plivo.dtmf"
    TELNYX_DIAL = "telnyx.dial"
    TELNYX_FETCH = "telnyx.fetch"
    TELNYX_ANSWER = "telnyx.answer"
    TELNYX_HANGUP = "telnyx.hangup"
    TELNYX_REJECT = "telnyx.reject"
    TELNYX_SPEAK = "telnyx.speak"
    TELNYX_SEND_DTMF = "telnyx.send_dtmf"
    TELNYX_STREAMING_START = "telnyx.streaming_start"
    TELNYX_STREAMING_STOP = "telnyx.streaming_stop"

    @property
    def carrier(self) -> str:
        return self.value.partition(".")[0]


@attrs.frozen
class Fault:
    status: int | None = None
    """Answer with this HTTP status (and ``body``, else an error in the carrier's shape)."""
    body: Any = None
    delay: float = 0.0
    """Seconds to wait before answering (longer than the client's deadline: a timeout)."""
    drop: bool = False
    """Close the connection in the middle of the answer."""
    redirect: str | None = None
    """Answer ``302`` with this ``Location`` (another host, say)."""
    after: bool = False
    """Let the request take effect first, then misbehave."""
    times: int | None = 1


@attrs.define
class FaultBook:
    """The armed faults, by endpoint, each with the hits it has left."""

    _armed: dict[Endpoint, tuple[Fault, int | None]] = attrs.field(factory=dict)

    def arm(self, endpoint: Endpoint, fault: Fault) -> None:
        self._armed[endpoint] = (fault, fault.times)

    def disarm(self, endpoint: Endpoint | None = None) -> None:
        if endpoint is None:
            self._armed.clear()
        else:
            self._armed.pop(endpoint, None)

    def take(self, endpoint: Endpoint) -> Fault | None:
        """The fault for one request to ``endpoint`` (counted as used), or ``None``."""
        entry = self._armed.get(endpoint)
        if entry is None:
            return None
        fault, left = entry
        if left is not None:
            if left <= 1:
                del self._armed[endpoint]
            else:
                self._armed[endpoint] = (fault, left - 1)
        return fault
