"""Per-call deadlines (ring timeout, max duration, stream grace) on one task and one heap.

A task per timer would be simple too, but thousands of restored calls would then mean thousands
of sleeping tasks and cancel scopes; a heap keeps arming and cancelling O(log n) and the whole
thing testable with the autojump clock. A timer is identified by ``(call_id, kind)``: arming it
again replaces the old deadline, cancelling it makes a pending expiry a no-op (lazy deletion by
generation number).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from enum import StrEnum

import trio

__all__ = ["TimerKind", "Timers"]

log = logging.getLogger("voicecalld.calls")


class TimerKind(StrEnum):
    RING = "ring"
    """Not answered within ``calls.ring_timeout``: end ``timeout``."""
    MAX_DURATION = "max-duration"
    """Live for ``calls.max_duration``: end ``timeout``."""
    STREAM_GRACE = "stream-grace"
    """Media stream gone for ``calls.stream_grace``: end ``stream-lost``."""
    SETTLE = "settle"
    """Speech estimated to be over: ``speaking`` → ``listening``."""


Expired = Callable[[str, TimerKind], None]


class Timers:
    def __init__(self, expired: Expired) -> None:
        self._expired = expired
        self._heap: list[tuple[float, int, str, TimerKind]] = []
        self._live: dict[tuple[str, TimerKind], int] = {}
        self._generation = 0
        self._wake = trio.Event()

    def arm(self, call_id: str, kind: TimerKind, deadline: float) -> None:
        """Fire ``kind`` for ``call_id`` at ``deadline`` (trio clock), replacing any earlier one."""
        self._generation += 1
        self._live[(call_id, kind)] = self._generation
        heapq.heappush(self._heap, (deadline, self._generation, call_id, kind))
        if len(self._heap) > 2 * len(self._live) + 1024:  # drop cancelled entries now and then
            self._heap = [e for e in self._heap if self._live.get((e[2], e[3])) == e[1]]
            heapq.heapify(self._heap)
        if self._heap[0][1] == self._generation:
            self._wake.set()

    def cancel(self, call_id: str, kind: TimerKind | None = None) -> None:
        """Cancel one timer of ``call_id``, or all of them."""
        kinds = list(TimerKind) if kind is None else [kind]
        for each in kinds:
            self._live.pop((call_id, each), None)

    def pending(self, call_id: str, kind: TimerKind) -> bool:
        return (call_id, kind) in self._live

    def __len__(self) -> int:
        return len(self._live)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wake = trio.Event()
            deadline = self._heap[0][0] if self._heap else float("inf")
            with trio.move_on_at(deadline):
                await self._wake.wait()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, generation, call_id, kind = heapq.heappop(self._heap)
                if self._live.get((call_id, kind)) != generation:
                    continue  # cancelled or re-armed
                del self._live[(call_id, kind)]
                self._expired(call_id, kind)
