"""The reaper (SPEC §7): ends calls that were never answered within ``calls.stale_after``.

A backstop for lost carrier callbacks: a call stuck ``initiated`` or ``ringing`` (the carrier's
final webhook never came, the ring timer was lost) would otherwise hold a concurrency slot
forever. Every ``calls.reaper_interval`` it ends such calls ``stale``; it never touches a call
that was answered (answered, active, speaking, listening). Ending owes the carrier hang-up, which
the manager attempts with at most one in flight per call and retries, logging every failure; a
call with no carrier id has nothing to hang up and just ends. ``stale_after = 0`` disables it.
"""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import ACTIVE_STATES, Call, EndReason
from voicecalld.config import Config
from voicecalld.metrics import Metrics

__all__ = ["Reaper", "stale"]

log = logging.getLogger("voicecalld.reaper")


def stale(call: Call, now: datetime, stale_after: float) -> bool:
    """Whether the reaper ends ``call``: not answered, not ended, older than ``stale_after``."""
    if call.ended or call.answered_at is not None or call.state in ACTIVE_STATES:
        return False
    return (now - call.created_at).total_seconds() >= stale_after


class Reaper:
    def __init__(self, manager: CallManager, config: Config, metrics: Metrics) -> None:
        self.manager = manager
        self.config = config
        self.metrics = metrics

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.manager.config.calls.reaper_interval)
            await self.tick()

    async def tick(self) -> int:
        """One sweep; returns how many calls it ended."""
        calls = self.manager.config.calls
        if calls.stale_after <= 0:
            return 0
        now = self.manager.now()
        reaped = 0
        for call in list(self.manager.calls.values()):
            if stale(call, now, calls.stale_after):
                log.info(
                    "reaping stale call", extra={"call_id": call.id, "state": call.state.value}
                )
                if await self.manager.end_call(call.id, EndReason.STALE) is not None:
                    reaped += 1
                    self.metrics.reaped.inc()
        return reaped
