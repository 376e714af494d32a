"""What the far end of a simulated call does, and which faults the carrier adds (pure data).

A :class:`Scenario` is the script of one call as the carrier sees it: whether the callee
answers (or is busy, or never answers, or the call fails), how long it rings, how long the far
end talks before hanging up, the digits it presses, and the faults to inject: a media stream
that breaks while the call goes on at the carrier, and webhook deliveries that are forged,
replayed, redelivered, late (out of order) or slow (:class:`WebhookFaults`). ``None`` for a duration
means "until told": the test (or voicecalld) decides, through the call's handle.

:func:`by_number` keeps the mock carrier's convention for calls voicecalld places with no
script of their own: a number ending in ``486`` is busy, ``408`` never answers, ``503`` fails.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import attrs

__all__ = ["Outcome", "Scenario", "WebhookFaults", "by_number"]


class Outcome(StrEnum):
    ANSWER = "answer"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"


@attrs.frozen
class WebhookFaults:
    forged: bool = False
    """Before each webhook, a copy signed with someone else's credentials (expect 403)."""
    replayed: bool = False
    """After each webhook, the very same bytes again (expect a harmless 200)."""
    duplicated: bool = False
    """After each webhook, a fresh delivery of it, as a carrier's retry (expect no effect)."""
    late: float = 0.0
    """Seconds every other status callback (the first, the third, ...) is held back,
    delivered in the background meanwhile: the one after it overtakes it (out of order)."""
    slow_body: float = 0.0
    """Seconds between the two halves of each body (past ``server.body_timeout``: 408)."""


@attrs.frozen
class Scenario:
    outcome: Outcome = Outcome.ANSWER
    ring: float | None = 0.5
    """Seconds an outbound call rings before the outcome (``None``: until ``answer()``); a call
    that is not answered ends ``no-answer`` then, or at the ring timeout it was placed with."""
    patience: float = 30.0
    """Seconds an inbound caller waits to be answered (Telnyx: for ``actions/answer``)."""
    talk: float | None = 3.0
    """Seconds the far end stays after the answer (``None``: until someone hangs up)."""
    dtmf: str = ""
    """Digits the far end presses once the media stream runs."""
    drop_stream: float | None = None
    """Seconds into the first media stream to break it, the call going on at the carrier."""
    faults: WebhookFaults = WebhookFaults()


_BY_SUFFIX: Final = {"486": Outcome.BUSY, "408": Outcome.NO_ANSWER, "503": Outcome.FAILED}


def by_number(number: str, default: Scenario) -> Scenario:
    """``default``, or its busy / no-answer / failed variant when ``number`` asks for one."""
    outcome = _BY_SUFFIX.get(number[-3:])
    return default if outcome is None else attrs.evolve(default, outcome=outcome)
