"""An in-memory Store for manager tests: no worker threads, so the autojump clock never mistakes
a commit in flight for idleness (with threads, virtual time can jump past a timer mid-write).
The SQLite store has its own tests (tests/store/); this one keeps the protocol's contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import trio

from voicecalld.calls.model import Call, EventType, NewEvent, StoredEvent
from voicecalld.store.base import CallPage, DuplicateWebhookKey


class MemoryStore:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.calls: dict[str, Call] = {}
        self.events: list[StoredEvent] = []
        self.keys: dict[str, datetime] = {}
        self.on_commit: Callable[[Sequence[StoredEvent]], None] | None = None
        self.commits = trio.Lock()
        """Held by a test, writes wait in line (reads see the older rows): a slow commit."""

    async def write(
        self, calls: Sequence[Call], events: Sequence[NewEvent] = (), webhook_key: str | None = None
    ) -> list[StoredEvent]:
        if self.commits.locked():  # trio's Lock is fair: held writes still apply in call order
            async with self.commits:
                return await self._apply(calls, events, webhook_key)
        return await self._apply(calls, events, webhook_key)

    async def _apply(
        self, calls: Sequence[Call], events: Sequence[NewEvent], webhook_key: str | None
    ) -> list[StoredEvent]:
        # applied at once, then a checkpoint: in call order, as the real store (Store.write)
        if webhook_key is not None:
            if webhook_key in self.keys:
                await trio.lowlevel.checkpoint()
                raise DuplicateWebhookKey(webhook_key)
            self.keys[webhook_key] = self.clock()
        for call in calls:
            self.calls[call.id] = call
        stored = [
            StoredEvent(len(self.events) + i + 1, e.type, e.call, self.clock(), dict(e.data))
            for i, e in enumerate(events)
        ]
        self.events += stored
        if stored and self.on_commit is not None:
            self.on_commit(stored)
        await trio.lowlevel.checkpoint()
        return stored

    async def get(self, call_id: str) -> Call | None:
        await trio.lowlevel.checkpoint()
        return self.calls.get(call_id)

    async def find(self, provider: str, provider_call_id: str) -> Call | None:
        await trio.lowlevel.checkpoint()
        for call in self.calls.values():
            if (call.provider, call.provider_call_id) == (provider, provider_call_id):
                return call
        return None

    async def open_calls(self) -> list[Call]:
        await trio.lowlevel.checkpoint()
        return [c for c in self.calls.values() if not c.ended]

    async def open_streams(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        last: dict[str, EventType] = {}
        for event in self.events:
            if event.type in (EventType.STREAM_STARTED, EventType.STREAM_STOPPED):
                last[event.call.id] = event.type
        return [
            c.id
            for c in self.calls.values()
            if not c.ended and last.get(c.id) is EventType.STREAM_STARTED
        ]

    async def calls_owing_hangup(self) -> list[Call]:
        await trio.lowlevel.checkpoint()
        return [c for c in self.calls.values() if c.metadata.get("hangup_owed")]

    async def list_calls(self, *, active: bool | None, limit: int, cursor: str | None) -> CallPage:
        await trio.lowlevel.checkpoint()
        calls = [c for c in reversed(self.calls.values()) if active is None or active != c.ended]
        start = int(cursor or 0)
        page = calls[start : start + limit]
        return page, (str(start + limit) if start + limit < len(calls) else None)

    async def events_after(self, event_id: int, limit: int) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        return [e for e in self.events if e.id > event_id][:limit]

    async def last_event_id(self) -> int:
        return len(self.events)

    async def webhook_keys_since(self, moment: datetime) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [k for k, at in self.keys.items() if at >= moment]

    async def purge(self, *, ended_before: datetime, keys_before: datetime) -> int:
        await trio.lowlevel.checkpoint()
        return 0
