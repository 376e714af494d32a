"""The Store protocol: what the call manager needs of durable storage, and nothing more.

The embedded default is :mod:`voicecalld.store.sqlite`. The interface is kept small and free of
SQL so that a PostgreSQL store (several instances sharing one database) can come later without
touching the manager.

Contract every implementation keeps:

- :meth:`Store.write` returns only after the write is durable (committed and synced): the
  caller acknowledges a webhook or API request after it, never before;
- a write is atomic: its calls, events and webhook key are all stored or none is;
- event ids increase in commit order and are never reused;
- concurrent writers may share one transaction (group commit) — correctness never depends on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from voicecalld.calls.model import Call, NewEvent, StoredEvent

__all__ = ["CallPage", "DuplicateWebhookKey", "RejectedWrite", "Store", "StoreError"]


class StoreError(Exception):
    """The store cannot be opened or written. At start-up this fails the ``store`` step (retried);
    at run time it fails the runtime, which the supervisor restarts."""


class RejectedWrite(StoreError):
    """A write broke a constraint (an event for a call never stored, a carrier call id already
    taken by another call): none of it was stored. The store itself is fine."""


class DuplicateWebhookKey(RejectedWrite):
    """The write's webhook key is already recorded: the webhook is a replay; nothing was stored.

    The manager's in-memory replay filter is bounded, the store's record is not: a replay the
    filter has forgotten surfaces here, and is answered like any replay."""


CallPage = tuple[list[Call], str | None]
"""A page of calls and the cursor of the next page (``None`` on the last page)."""


class Store(Protocol):
    on_commit: Callable[[Sequence[StoredEvent]], None] | None
    """Called once per transaction with its events in id order, before any of its writers
    resumes: the one place live subscribers can be fed in commit order."""

    async def write(
        self,
        calls: Sequence[Call],
        events: Sequence[NewEvent] = (),
        webhook_key: str | None = None,
    ) -> list[StoredEvent]:
        """Upsert ``calls``, append ``events`` and record ``webhook_key``, durably and atomically.

        Returns the events as stored, with their ids, in the order given. Writes take effect
        in the order they are called, whatever order their callers resume in: the manager
        writes a call's newest version last, and that must be the row that stays.
        """
        ...

    async def get(self, call_id: str) -> Call | None: ...

    async def find(self, provider: str, provider_call_id: str) -> Call | None:
        """The call a carrier knows by ``provider_call_id`` (ended or not)."""
        ...

    async def open_calls(self) -> list[Call]:
        """Every call not yet ended: what reconciliation starts from."""
        ...

    async def open_streams(self) -> list[str]:
        """The ids of calls not ended whose last stream event is ``stream.started``: streams a
        process left open when it died (a graceful stop records every stream's end)."""
        ...

    async def calls_owing_hangup(self) -> list[Call]:
        """Ended calls whose carrier hang-up is still owed (``metadata.hangup_owed`` true)."""
        ...

    async def list_calls(self, *, active: bool | None, limit: int, cursor: str | None) -> CallPage:
        """Calls, newest first; ``active`` filters ended (False) or not ended (True)."""
        ...

    async def events_after(self, event_id: int, limit: int) -> list[StoredEvent]:
        """Events with ids greater than ``event_id``, oldest first (SSE resume)."""
        ...

    async def last_event_id(self) -> int: ...

    async def webhook_keys_since(self, moment: datetime) -> list[str]:
        """Replay keys recorded since ``moment``, oldest first, to warm the replay filter."""
        ...

    async def purge(self, *, ended_before: datetime, keys_before: datetime) -> int:
        """Delete calls ended before ``ended_before`` with their events, and older replay keys.

        Returns the number of calls deleted.
        """
        ...
