"""Restart reconciliation (SPEC §7): no open call counts as live without the carrier's word.

On start, every call the store holds as not ended is taken into the manager and settled:

=====================================  ===========================================================
the call                               becomes
=====================================  ===========================================================
no ``provider_call_id``                ended ``lost`` (it never reached the carrier); nothing sent
older than ``calls.max_duration``      ended ``timeout``, carrier hang-up owed (counted from its
                                       answer, or from its creation if never answered)
carrier says it ended                  ended with the carrier's reason (busy stays busy); no
                                       hang-up sent
carrier answers 404                    ended ``completed`` (the carriers map "gone" so)
carrier says it is live                restored; ring / max-duration timers re-armed for the time
                                       left (answered now if the carrier says it was answered;
                                       if it cannot say, as Telnyx, an unanswered call gets max
                                       duration from its creation, not a ring timer that could
                                       end a conversation begun while voicecalld was down)
live, answered, conversation mode      also its stream grace starts: its media stream died with
                                       the old process (or, answered while voicecalld was down,
                                       was never opened): without a new one within
                                       ``calls.stream_grace`` it ends ``stream-lost``
carrier error, timeout, 5xx, refused   kept; asked again with backoff (1 s doubling to 60 s); its
                                       timers run meanwhile (the stream grace included), so an
                                       unreachable carrier cannot keep it past max duration
ended meanwhile by other news          nothing: that news stands (``gone``)
=====================================  ===========================================================

Rules, and why:

- **A backstop before the first question.** Every loaded call gets a max-duration timer at once
  (from its answer, or its creation), before the carrier is asked: a lookup may wait behind
  thousands of others or a carrier's timeouts, and no call may outlive max duration meanwhile.
  The ring timer waits for the carrier's word (or its failure): firing it first could end as
  ``timeout`` a call that was answered while voicecalld was down.
- **Bounded**: at most ``calls.reconcile_concurrency`` lookups in flight, by that many workers
  over one queue (memory stays flat with 10,000 calls).
- **A dead carrier is asked once per round, not once per call.** After
  :data:`UNREACHABLE_AFTER` lookups at one provider fail in a row within a pass, the pass keeps
  that provider's remaining calls without asking (each still logged and counted ``retry``): a
  carrier that times out would otherwise hold the first pass, and readiness, for calls x
  timeout / concurrency (hours for 10,000 calls). One bad call cannot trip it: a success resets
  the count.
- **News during a lookup wins.** Webhooks are served while reconciliation runs and go through
  the same forward-only machine. The carrier's answer is applied to the call as it is *after*
  the lookup: if a webhook or a timer ended it meanwhile, nothing is changed (``gone``); if a
  webhook moved it forward, the machine keeps the newer state.
- Every outcome is logged (``reconciled``, with the call id and the outcome; ``retry`` at
  warning level with the error) and counted in ``voicecalld_reconcile_total{outcome}``.

:func:`verdict` holds the rules that need no carrier, pure. The :class:`Reconciler` is the
``restore`` start-up step: it reports started (so the daemon turns ready) after one pass over
every call, then keeps retrying the calls it could not settle.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from datetime import datetime
from enum import StrEnum
from typing import Final

import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import Call, EndReason, Mode
from voicecalld.calls.timers import TimerKind
from voicecalld.carriers.base import CarrierError, CarrierStatus
from voicecalld.metrics import Metrics

__all__ = [
    "RETRY_BASE",
    "RETRY_CAP",
    "UNREACHABLE_AFTER",
    "Outcome",
    "Reconciler",
    "seconds_left",
    "verdict",
]

log = logging.getLogger("voicecalld.reconcile")

RETRY_BASE: Final = 1.0
RETRY_CAP: Final = 60.0
UNREACHABLE_AFTER: Final = 3
"""Lookups at one provider failing in a row, in one pass, after which the pass stops asking it."""


class Outcome(StrEnum):
    LOST = "lost"
    TIMEOUT = "timeout"
    ENDED = "ended"
    RESTORED = "restored"
    RETRY = "retry"
    GONE = "gone"
    """Settled meanwhile by other news (a webhook, a timer): nothing to do."""


def seconds_left(call: Call, now: datetime, max_duration: float) -> float:
    """How long ``call`` may still last: max duration from its answer, or from its creation
    when the answer is not known (an upper bound: it cannot have been answered before that)."""
    return max_duration - (now - call.max_duration_from).total_seconds()


def verdict(call: Call, now: datetime, max_duration: float) -> Outcome | None:
    """The outcome decided without asking the carrier, or ``None`` when the carrier must say."""
    if not call.provider_call_id:
        return Outcome.LOST
    if seconds_left(call, now, max_duration) <= 0:
        return Outcome.TIMEOUT
    return None


class Reconciler:
    """The ``restore`` step. ``config`` is the one the runtime started with; the values in
    force are read from ``manager.config``, which follows reloads."""

    def __init__(self, manager: CallManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self._retry: dict[str, tuple[float, int]] = {}
        """Calls kept after a carrier error: next attempt (trio clock) and attempts so far."""
        self.outcomes: Counter[Outcome] = Counter()
        """Outcomes so far in this runtime (``/metrics`` counts across restarts)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        manager = self.manager
        calls, manager.restored = manager.restored, []
        for call in calls:
            current = manager.calls.get(call.id)  # a webhook may have moved it since
            if current is not None:
                self._arm_backstop(current)
        if calls:
            log.info("reconciling open calls", extra={"calls": len(calls)})
        started = trio.current_time()
        await self._pass([call.id for call in calls])
        if calls:
            summary = {str(outcome): n for outcome, n in sorted(self.outcomes.items())}
            seconds = round(trio.current_time() - started, 3)
            log.info("first pass done", extra={"calls": len(calls), "seconds": seconds, **summary})
        task_status.started()
        while True:
            if not self._retry:
                await trio.sleep_forever()  # nothing left to settle
            await trio.sleep_until(min(when for when, _ in self._retry.values()))
            now = trio.current_time()
            await self._pass([cid for cid, (when, _) in self._retry.items() if when <= now])

    def _arm_backstop(self, call: Call) -> None:
        """Max duration, armed before the carrier is asked; and, for a conversation, a stream
        grace that waits for the carrier's word (see :meth:`_start_stream_grace`)."""
        manager = self.manager
        left = seconds_left(call, manager.now(), manager.config.calls.max_duration)
        manager.timers.arm(call.id, TimerKind.MAX_DURATION, trio.current_time() + max(0.0, left))
        if call.mode is Mode.CONVERSATION:
            # "No stream since the restart": pending, never due; a stream that connects from now
            # on cancels it (``stream_back``), which is how :meth:`_start_stream_grace` knows.
            manager.timers.arm(call.id, TimerKind.STREAM_GRACE, math.inf)

    def _start_stream_grace(self, call: Call) -> None:
        """Once the carrier has spoken (or failed to): an answered conversation call that no
        stream has reached since the restart gets ``stream_grace`` for one. Its stream, if it
        had one, died with the old process; if it was answered while voicecalld was down, the
        carrier never got the instructions that open one. Either way, without a new stream it
        is dead air holding a slot until max duration."""
        answered = call.answered_at is not None and call.mode is Mode.CONVERSATION
        if answered and self.manager.timers.pending(call.id, TimerKind.STREAM_GRACE):
            self.manager.stream_gone(call.id)

    async def _pass(self, call_ids: list[str]) -> None:
        """Settle ``call_ids`` with at most ``reconcile_concurrency`` lookups in flight."""
        queue = deque(call_ids)
        failing: Counter[str] = Counter()
        """Per provider: lookups failed in a row in this pass."""

        async def worker() -> None:
            while queue:
                await self._settle(queue.popleft(), failing)

        workers = min(self.manager.config.calls.reconcile_concurrency, len(queue))
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)

    async def _settle(self, call_id: str, failing: Counter[str]) -> None:
        manager = self.manager
        _, attempts = self._retry.pop(call_id, (0.0, 0))
        call = manager.calls.get(call_id)
        if call is None:
            return self._count(call_id, Outcome.GONE)
        decided = verdict(call, manager.now(), manager.config.calls.max_duration)
        if decided is not None:
            hangup = decided is Outcome.TIMEOUT
            reason = EndReason.TIMEOUT if hangup else EndReason.LOST
            ended = await manager.end_call(call_id, reason, hangup=hangup)
            return self._count(call_id, decided if ended is not None else Outcome.GONE)
        provider = call.provider
        if failing[provider] >= UNREACHABLE_AFTER:
            error = f"not asked: {failing[provider]} lookups at {provider} failed in a row"
            return self._keep(call_id, attempts, error)
        carrier = manager.carriers.get(provider)
        try:
            if carrier is None:
                raise CarrierError(f"provider {provider} is not enabled", retryable=True)
            status = await carrier.status(call)
        except CarrierError as error:
            failing[provider] += 1
            return self._keep(call_id, attempts, str(error))
        failing[provider] = 0
        return await self._apply(call_id, status)

    async def _apply(self, call_id: str, status: CarrierStatus) -> None:
        """The carrier's word, applied to the call as it is now (news may have come meanwhile)."""
        manager = self.manager
        if call_id not in manager.calls:
            return self._count(call_id, Outcome.GONE)
        if not status.live:
            reason = status.end_reason or EndReason.COMPLETED
            ended = await manager.end_call(call_id, reason, hangup=False)
            outcome = Outcome.ENDED if ended is not None else Outcome.GONE
            return self._count(call_id, outcome, reason=reason.value)
        await manager.confirm_live(call_id, answered=status.answered, ringing=status.ringing)
        restored = manager.calls.get(call_id)
        if restored is None:
            return self._count(call_id, Outcome.GONE)
        self._start_stream_grace(restored)
        answered = restored.answered_at is not None
        return self._count(call_id, Outcome.RESTORED, answered=answered)

    def _keep(self, call_id: str, attempts: int, error: str) -> None:
        """Ask again later; the first time, start the call's timers as the carrier's word would
        (on the call as it is now: a webhook may have moved it while the carrier was silent)."""
        call = self.manager.calls.get(call_id)
        if call is None:
            return self._count(call_id, Outcome.GONE)
        attempts += 1
        delay = min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1))
        self._retry[call_id] = (trio.current_time() + delay, attempts)
        if attempts == 1:
            self.manager.arm_lifetime(call)
            self._start_stream_grace(call)
        return self._count(call_id, Outcome.RETRY, error=error, attempt=attempts, retry_in_s=delay)

    def _count(self, call_id: str, outcome: Outcome, **fields: object) -> None:
        self.outcomes[outcome] += 1
        self.metrics.reconcile.inc(outcome=outcome.value)
        level = logging.WARNING if outcome is Outcome.RETRY else logging.INFO
        log.log(level, "reconciled", extra={"call_id": call_id, "outcome": outcome.value, **fields})
