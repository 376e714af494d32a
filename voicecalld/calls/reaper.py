"""The reaper (SPEC §7): ends calls that were never answered within ``calls.stale_after``.

A backstop for lost carrier callbacks: a call stuck ``initiated`` or ``ringing`` (the carrier's
final webhook never came, the ring timer was lost) would otherwise hold a concurrency slot
forever. Every ``calls.reaper_interval`` it ends such calls ``stale``.

Rules it keeps, and why:

- It never touches a call that was answered (answered, active, speaking, listening): those
  belong to max duration and stream loss, which know better than "old".
- Ending owes the carrier hang-up (the manager's *owed hang-up*): attempted at once, at most one
  in flight per call, retried with backoff until the carrier confirms, every failure logged
  with the call id and the error. An ended call leaves the manager's live calls at once, so a
  later sweep cannot end it, or hang it up, a second time. A call with no carrier id has nothing
  to hang up and just ends.
- One sweep ends its calls concurrently (each is one durable write; the store commits them
  together) rather than one after another.
- It reads ``manager.config`` at every sweep, so a reload (SIGHUP) takes effect at the next one;
  ``stale_after = 0`` disables it.
"""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import ACTIVE_STATES, Call, EndReason
from voicecalld.metrics import Metrics

__all__ = ["Reaper", "stale"]

log = logging.getLogger("voicecalld.reaper")


def stale(call: Call, now: datetime, stale_after: float) -> bool:
    """Whether the reaper ends ``call``: not answered, not ended, older than ``stale_after``."""
    if call.ended or call.answered_at is not None or call.state in ACTIVE_STATES:
        return False
    return (now - call.created_at).total_seconds() >= stale_after


class Reaper:
    """The ``reaper`` step. ``config`` is the one the runtime started with; the values in force
    are read from ``manager.config``, which follows reloads."""

    def __init__(self, manager: CallManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self._wait = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        swept = trio.current_time()
        while True:
            with trio.CancelScope() as self._wait:
                await trio.sleep_until(swept + self.manager.config.calls.reaper_interval)
            if self._wait.cancelled_caught:
                continue  # reconfigured: the next sweep is due by the interval now in force
            swept = trio.current_time()
            await self.tick()

    def reconfigure(self) -> None:
        """The config was reloaded: a changed ``calls.reaper_interval`` counts from the last
        sweep at once, not after the wait the old one began (up to that old interval)."""
        self._wait.cancel()

    async def tick(self) -> int:
        """One sweep; returns how many calls it ended."""
        stale_after = self.manager.config.calls.stale_after
        if stale_after <= 0:
            return 0
        now = self.manager.now()
        doomed = [c.id for c in self.manager.calls.values() if stale(c, now, stale_after)]
        reaped: list[Call] = []
        async with trio.open_nursery() as nursery:
            for call_id in doomed:
                nursery.start_soon(self._reap, call_id, now, stale_after, reaped)
        return len(reaped)

    async def _reap(
        self, call_id: str, now: datetime, stale_after: float, reaped: list[Call]
    ) -> None:
        call = self.manager.calls.get(call_id)
        if call is None or not stale(call, now, stale_after):
            return  # news came meanwhile (answered, ended): not ours any more
        # no await between this check and end_call's own read of the call: nothing can slip in
        ended = await self.manager.end_call(call_id, EndReason.STALE)
        assert ended is not None
        reaped.append(ended)
        self.metrics.reaped.inc()
        log.info(
            "reaped stale call",
            extra={
                "call_id": call.id,
                "provider": call.provider,
                "state": call.state.value,
                "age_s": round((now - call.created_at).total_seconds(), 1),
                "hangup_owed": bool(ended.metadata.get("hangup_owed")),
            },
        )
