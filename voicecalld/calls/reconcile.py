"""Restart reconciliation (SPEC §7): no open call counts as live without the carrier's word.

On start, every call the store holds as not ended is taken into the manager and settled:

=====================================  ===========================================================
the call                               becomes
=====================================  ===========================================================
no ``provider_call_id``                ended ``lost`` (it never reached the carrier)
older than ``calls.max_duration``      ended ``timeout``, carrier hang-up owed
carrier says it ended                  ended with the carrier's reason (busy stays busy)
carrier answers 404                    ended ``completed`` (the carrier maps 404 so)
carrier says it is live                restored; ring / max-duration timers re-armed for the time
                                       left (answered if the carrier says so)
carrier error, timeout, 5xx            kept; asked again with backoff; its timers run meanwhile,
                                       so an unreachable carrier cannot keep it past max duration
=====================================  ===========================================================

:func:`verdict` holds the rules that need no carrier, pure. The :class:`Reconciler` is the
``restore`` start-up step: it reports started (so the daemon turns ready) after one pass over
every call, with ``calls.reconcile_concurrency`` carrier lookups at most in flight, then keeps
retrying the calls it could not settle. Webhooks that arrive meanwhile go through the same
forward-only state machine, so whichever news comes first wins and none is misapplied.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime
from enum import StrEnum
from typing import Final

import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import Call, EndReason
from voicecalld.carriers.base import CarrierError, CarrierStatus
from voicecalld.config import Config
from voicecalld.metrics import Metrics

__all__ = ["Outcome", "Reconciler", "verdict"]

log = logging.getLogger("voicecalld.reconcile")

RETRY_BASE: Final = 1.0
RETRY_CAP: Final = 60.0


class Outcome(StrEnum):
    LOST = "lost"
    TIMEOUT = "timeout"
    ENDED = "ended"
    RESTORED = "restored"
    RETRY = "retry"
    GONE = "gone"
    """Settled meanwhile by other news (a webhook, a timer): nothing to do."""


def verdict(call: Call, now: datetime, max_duration: float) -> Outcome | None:
    """The outcome decided without asking the carrier, or ``None`` when the carrier must say."""
    if not call.provider_call_id:
        return Outcome.LOST
    started = call.answered_at or call.created_at
    if (now - started).total_seconds() >= max_duration:
        return Outcome.TIMEOUT
    return None


class Reconciler:
    def __init__(self, manager: CallManager, config: Config, metrics: Metrics) -> None:
        self.manager = manager
        self.config = config
        self.metrics = metrics
        self._retry: dict[str, tuple[float, int]] = {}
        """Calls kept after a carrier error: next attempt time and attempts so far."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        calls = await self.manager.store.open_calls()
        for call in calls:
            self.manager.adopt(call, arm=False)
        if calls:
            log.info("reconciling open calls", extra={"calls": len(calls)})
        await self._pass([call.id for call in calls])
        task_status.started()
        while True:
            if not self._retry:
                await trio.sleep_forever()  # nothing left to settle
            due_at = min(when for when, _ in self._retry.values())
            await trio.sleep_until(due_at)
            now = trio.current_time()
            await self._pass([cid for cid, (when, _) in self._retry.items() if when <= now])

    async def _pass(self, call_ids: list[str]) -> None:
        """Settle ``call_ids`` with at most ``reconcile_concurrency`` in flight."""
        queue = deque(call_ids)

        async def worker() -> None:
            while queue:
                await self._settle(queue.popleft())

        async with trio.open_nursery() as nursery:
            for _ in range(min(self.config.calls.reconcile_concurrency, len(queue))):
                nursery.start_soon(worker)

    async def _settle(self, call_id: str) -> None:
        manager = self.manager
        call = manager.calls.get(call_id)
        if call is None:
            self._retry.pop(call_id, None)
            return self._count(call_id, Outcome.GONE)
        decided = verdict(call, manager.now(), self.config.calls.max_duration)
        if decided is Outcome.LOST:
            await manager.end_call(call_id, EndReason.LOST, hangup=False)
            return self._count(call_id, decided)
        if decided is Outcome.TIMEOUT:
            await manager.end_call(call_id, EndReason.TIMEOUT)
            return self._count(call_id, decided)
        carrier = manager.carriers.get(call.provider)
        try:
            if carrier is None:
                raise CarrierError(f"provider {call.provider} is not enabled", retryable=True)
            status = await carrier.status(call)
        except CarrierError as error:
            self._keep(call, error)
            return None
        self._retry.pop(call_id, None)
        await self._apply(call, status)
        return None

    async def _apply(self, call: Call, status: CarrierStatus) -> None:
        if status.live:
            await self.manager.confirm_live(call.id, answered=status.answered)
            self._count(call.id, Outcome.RESTORED)
        else:
            await self.manager.end_call(
                call.id, status.end_reason or EndReason.COMPLETED, hangup=False
            )
            self._count(call.id, Outcome.ENDED, reason=str(status.end_reason))

    def _keep(self, call: Call, error: CarrierError) -> None:
        _, attempts = self._retry.get(call.id, (0.0, 0))
        attempts += 1
        delay = min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1))
        self._retry[call.id] = (trio.current_time() + delay, attempts)
        if attempts == 1:
            self.manager.arm_lifetime(call)  # the timers run while the carrier is unreachable
        self._count(call.id, Outcome.RETRY, error=str(error), retry_in_s=delay)

    def _count(self, call_id: str, outcome: Outcome, **fields: object) -> None:
        self.metrics.reconcile.inc(outcome=outcome.value)
        level = logging.WARNING if outcome is Outcome.RETRY else logging.INFO
        log.log(level, "reconciled", extra={"call_id": call_id, "outcome": outcome.value, **fields})
