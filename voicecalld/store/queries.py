"""The store's SQL: synchronous functions on a ``sqlite3.Connection`` handed in.

Calls and events to and from rows of the tables :mod:`voicecalld.store.schema` creates, the
cursors of call lists, the queries, and the appliers of a write and a purge. Shared by the
daemon's store (:mod:`voicecalld.store.sqlite`) and the read-only view for ``voicecalld status``
(:mod:`voicecalld.store.readonly`), so that both read a record the same way.

Invariants, and why:

- **No I/O but the connection handed in, and no trio.** The caller picks the thread (the
  store's worker threads, or ``status`` synchronously) and owns the connection.
- **No transaction control.** Nothing here begins, commits or rolls back: the writer applies
  a batch's writes and purges inside its one transaction, under a savepoint each when one
  fails, so an applier that ended a transaction would break group commit and isolation.
- **The ``json`` column is the record.** A call is read back from it alone; the other columns
  are copies :func:`call_row` takes from the same call, for indexes and WHERE clauses.
- **Errors are the caller's to word.** ``sqlite3`` errors propagate as they are (readers wrap
  them in :class:`~voicecalld.store.base.StoreError`; the writer makes an integrity error a
  :class:`~voicecalld.store.base.RejectedWrite` and any other its stop); :func:`apply_write`
  raises :class:`~voicecalld.store.base.DuplicateWebhookKey` for a replay; a bad ``limit`` or
  cursor is a ``ValueError``, a client's error, not the store's.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from voicecalld.calls.model import Call, EventType, NewEvent, StoredEvent, format_time, parse_time
from voicecalld.store.base import CallPage, DuplicateWebhookKey

__all__ = [
    "apply_purge",
    "apply_write",
    "call_row",
    "calls_owing_hangup",
    "dumps",
    "events_after",
    "find",
    "get",
    "last_event_id",
    "list_calls",
    "open_calls",
    "open_streams",
    "webhook_keys_since",
]


# --- rows: calls and events to and from SQL ------------------------------------------------


def dumps(value: Any) -> str:
    """``value`` as the text of a ``json`` column."""
    return orjson.dumps(value).decode()


def call_row(call: Call, record: dict[str, Any]) -> tuple[str | int | None, ...]:
    """The ``calls`` row of ``call``, whose :meth:`Call.to_json` is ``record`` (made once by
    the caller, who also needs it for the call's events)."""
    ended_at = format_time(call.ended_at or call.updated_at) if call.ended else None
    return (
        call.id,
        call.provider,
        call.provider_call_id,
        call.state.value,
        record["created_at"],
        record["updated_at"],
        ended_at,
        1 if call.metadata.get("hangup_owed") else 0,
        dumps(record),
    )


def _load_call(text: str) -> Call:
    return Call.from_json(orjson.loads(text))


def _load_event(row: tuple[int, str, str, str]) -> StoredEvent:
    event_id, event_type, at, text = row
    record = orjson.loads(text)
    return StoredEvent(
        id=event_id,
        type=EventType(event_type),
        call=Call.from_json(record["call"]),
        at=parse_time(at),
        data=record["data"],
    )


def _encode_cursor(created_at: str, call_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, call_id])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor names; ``ValueError`` for anything :func:`_encode_cursor` did not
    make (the API answers it with 400, not with a store failure)."""
    try:
        position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        position = None
    if (
        not isinstance(position, list)
        or len(position) != 2
        or not all(isinstance(part, str) for part in position)
    ):
        raise ValueError(f"cursor: not a cursor of this store: {cursor!r}")
    return position[0], position[1]


# --- reads ------------------------------------------------------------------------------------


def get(conn: sqlite3.Connection, call_id: str) -> Call | None:
    row = conn.execute("SELECT json FROM calls WHERE id = ?", (call_id,)).fetchone()
    return None if row is None else _load_call(row[0])


def find(conn: sqlite3.Connection, provider: str, provider_call_id: str) -> Call | None:
    row = conn.execute(
        "SELECT json FROM calls WHERE provider = ? AND provider_call_id = ?",
        (provider, provider_call_id),
    ).fetchone()
    return None if row is None else _load_call(row[0])


def open_streams(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM calls WHERE ended_at IS NULL AND ("
        " SELECT type FROM events WHERE call_id = calls.id"
        " AND type IN ('stream.started', 'stream.stopped') ORDER BY id DESC LIMIT 1"
        ") = 'stream.started' ORDER BY created_at, id"
    ).fetchall()
    return [call_id for (call_id,) in rows]


def open_calls(conn: sqlite3.Connection) -> list[Call]:
    rows = conn.execute(
        "SELECT json FROM calls WHERE ended_at IS NULL ORDER BY created_at, id"
    ).fetchall()
    return [_load_call(text) for (text,) in rows]


def calls_owing_hangup(conn: sqlite3.Connection) -> list[Call]:
    rows = conn.execute(
        "SELECT json FROM calls WHERE hangup_owed = 1 ORDER BY created_at, id"
    ).fetchall()
    return [_load_call(text) for (text,) in rows]


def list_calls(
    conn: sqlite3.Connection, active: bool | None, limit: int, cursor: str | None
) -> CallPage:
    """Newest first by ``(created_at, id)``; a cursor is the position of a page's last call."""
    if limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {limit}")
    conditions = ["1"]
    parameters: list[str | int] = []
    if cursor is not None:
        conditions.append("(created_at, id) < (?, ?)")
        parameters.extend(_decode_cursor(cursor))
    if active is not None:
        conditions.append("ended_at IS NULL" if active else "ended_at IS NOT NULL")
    rows = conn.execute(
        # Only this function's constant conditions are joined in; values are parameters.
        f"SELECT created_at, id, json FROM calls WHERE {' AND '.join(conditions)} "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT ?",
        (*parameters, limit + 1),
    ).fetchall()
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1][0], page[-1][1]) if len(rows) > limit else None
    return [_load_call(text) for _, _, text in page], next_cursor


def events_after(conn: sqlite3.Connection, event_id: int, limit: int) -> list[StoredEvent]:
    if limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {limit}")
    rows = conn.execute(
        "SELECT id, type, at, json FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (event_id, limit),
    ).fetchall()
    return [_load_event(row) for row in rows]


def last_event_id(conn: sqlite3.Connection) -> int:
    """The highest id ever given, from AUTOINCREMENT's ledger: purge never lowers it."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def webhook_keys_since(conn: sqlite3.Connection, moment: datetime) -> list[str]:
    rows = conn.execute(
        "SELECT key FROM webhook_keys WHERE seen_at >= ? ORDER BY seen_at, rowid",
        (format_time(moment),),
    ).fetchall()
    return [key for (key,) in rows]


# --- writes: run by the writer thread inside the batch's transaction -----------------------

_UPSERT_CALL: Final = """
    INSERT INTO calls (
        id, provider, provider_call_id, state, created_at, updated_at, ended_at, hangup_owed, json
    )
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        provider = excluded.provider, provider_call_id = excluded.provider_call_id,
        state = excluded.state, created_at = excluded.created_at,
        updated_at = excluded.updated_at, ended_at = excluded.ended_at,
        hangup_owed = excluded.hangup_owed, json = excluded.json
"""


def apply_write(
    conn: sqlite3.Connection,
    *,
    call_rows: Sequence[tuple[str | int | None, ...]],
    events: Sequence[NewEvent],
    event_rows: Sequence[tuple[str, str, str, str]],
    webhook_key: str | None,
    now: datetime,
) -> list[StoredEvent]:
    at = format_time(now)
    if webhook_key is not None:
        try:
            conn.execute("INSERT INTO webhook_keys (key, seen_at) VALUES (?, ?)", (webhook_key, at))
        except sqlite3.IntegrityError:  # the primary key: a replay
            raise DuplicateWebhookKey(f"webhook key already recorded: {webhook_key!r}") from None
    conn.executemany(_UPSERT_CALL, call_rows)
    stored = []
    for event, row in zip(events, event_rows, strict=True):
        cursor = conn.execute(
            "INSERT INTO events (type, call_id, at, json) VALUES (?, ?, ?, ?)", row
        )
        assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
        stored.append(StoredEvent(cursor.lastrowid, event.type, event.call, now, dict(event.data)))
    return stored


def apply_purge(conn: sqlite3.Connection, *, ended_before: str, keys_before: str) -> int:
    """A call still owed a carrier hang-up is kept, however old: forgetting it would leave the
    carrier's call up, and its record is what the manager retries from."""
    conn.execute(
        "DELETE FROM events WHERE call_id IN "
        "(SELECT id FROM calls WHERE ended_at < ? AND hangup_owed = 0)",
        (ended_before,),
    )
    deleted = conn.execute(
        "DELETE FROM calls WHERE ended_at < ? AND hangup_owed = 0", (ended_before,)
    ).rowcount
    conn.execute("DELETE FROM webhook_keys WHERE seen_at < ?", (keys_before,))
    return deleted
