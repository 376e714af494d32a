"""The SQLite schema of the embedded store, as numbered migrations.

Invariants:

- ``PRAGMA user_version`` is the number of migrations applied; migration *n* (1-based) is
  ``MIGRATIONS[n - 1]``. A released migration is never edited, only followed by a new one, so
  a database at version *n* has exactly the same schema whichever release created it.
- :func:`migrate` applies the missing steps and sets the version in **one** transaction: a
  failing step leaves the database exactly as it was, never half-migrated.
- A database whose version is newer than :data:`SCHEMA_VERSION` was written by a newer release;
  it is refused, never downgraded or written, because this code cannot know what it would break.

Times are stored as :func:`voicecalld.calls.model.format_time` text (RFC 3339 UTC, milliseconds,
``Z``): fixed width, so text order is time order, and readable in the ``sqlite3`` shell.
The ``json`` columns hold :meth:`Call.to_json` and are the record; the other columns are
copies kept for indexes and for operators reading the file by hand.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from voicecalld.store.base import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLITE_MIN", "Migration", "migrate", "schema_version"]

Migration = Sequence[str]
"""One schema step: SQL statements run in order (``executescript`` would commit on its own)."""

SQLITE_MIN: Final = (3, 24, 0)
"""Upserts (``ON CONFLICT ... DO UPDATE``) need 3.24; read-only WAL readers need 3.22."""

MIGRATIONS: Final[Sequence[Migration]] = (
    # 1: calls, events, webhook replay keys.
    (
        # ended_at is set exactly when the call is ended (its ended_at, else its last update),
        # so "open" is `ended_at IS NULL` and retention compares one indexed column.
        """
        CREATE TABLE calls (
            id TEXT PRIMARY KEY NOT NULL,
            provider TEXT NOT NULL,
            provider_call_id TEXT,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            ended_at TEXT,
            hangup_owed INTEGER NOT NULL DEFAULT 0,
            json TEXT NOT NULL
        )
        """,
        # A carrier's call id names one call: find() must have one answer. NULLs are distinct.
        "CREATE UNIQUE INDEX calls_by_carrier_id ON calls (provider, provider_call_id)",
        "CREATE INDEX calls_newest ON calls (created_at, id)",
        "CREATE INDEX calls_open ON calls (created_at, id) WHERE ended_at IS NULL",
        "CREATE INDEX calls_ended ON calls (ended_at) WHERE ended_at IS NOT NULL",
        # metadata.hangup_owed, as a column: start-up finds the owed hang-ups without a scan.
        "CREATE INDEX calls_owing_hangup ON calls (created_at, id) WHERE hangup_owed = 1",
        # AUTOINCREMENT: ids are never reused, even after purge deleted the newest events.
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            type TEXT NOT NULL,
            call_id TEXT NOT NULL REFERENCES calls (id),
            at TEXT NOT NULL,
            json TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_by_call ON events (call_id)",
        "CREATE TABLE webhook_keys (key TEXT PRIMARY KEY NOT NULL, seen_at TEXT NOT NULL)",
        "CREATE INDEX webhook_keys_seen ON webhook_keys (seen_at)",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)`` in one transaction; return the version it had.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no transaction open.
    Raises :class:`StoreError` for a database newer than ``migrations`` knows; an SQL error in
    a step propagates as it is, after the rollback.
    """
    target = len(migrations)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > target:
            raise StoreError(
                f"schema version {found} is newer than this voicecalld knows ({target}); "
                "it was written by a newer release: run that release or restore a backup"
            )
        for statements in migrations[found:]:
            for statement in statements:
                conn.execute(statement)
        if found != target:
            conn.execute(f"PRAGMA user_version = {target:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
