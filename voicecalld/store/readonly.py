"""The read-only view of a store, for ``voicecalld status``: synchronous, never writing, never
creating a file, whether a daemon runs or not.

Invariants, and why:

- **Nothing written, nothing created.** :func:`open_readonly` opens the file read-only
  (``mode=ro``, ``query_only``), and as immutable when there is no WAL, since a reader would
  otherwise leave ``-wal`` and ``-shm`` files behind, owned by whoever ran ``status``. It never
  creates the database either: no store is :class:`StoreMissing`, an absence to report.
- **Beside the daemon, not against it.** It takes no state-directory lock; under WAL it reads
  the last commit while the daemon writes, and it waits for the daemon's locks as long as the
  daemon's own connections do (:mod:`voicecalld.store.database`).
- **Only the schema this release reads.** A store of another schema version is refused, never
  migrated: migrating is the daemon's, under its lock.
- **Every failure is a** :class:`~voicecalld.store.base.StoreError` naming the file.

The SQL is :mod:`voicecalld.store.queries`, the daemon's own, so ``status`` shows what the
daemon would read.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import attrs

from voicecalld.calls.model import Call
from voicecalld.store import queries
from voicecalld.store.base import CallPage, StoreError
from voicecalld.store.database import DB_NAME, connect
from voicecalld.store.schema import SCHEMA_VERSION, schema_version

__all__ = ["ReadOnlyStore", "StoreMissing", "StoreSummary", "open_readonly"]


class StoreMissing(StoreError, FileNotFoundError):
    """There is no store to read: the daemon never ran with this state directory. Also a
    ``FileNotFoundError``, so that ``status`` can treat it as the absence it is."""


@attrs.frozen
class StoreSummary:
    """What ``voicecalld status`` shows of a store."""

    path: Path
    schema_version: int
    by_state: Mapping[str, int]
    events: int
    last_event_id: int

    @property
    def calls(self) -> int:
        return sum(self.by_state.values())

    @property
    def open_calls(self) -> int:
        return self.calls - self.by_state.get("ended", 0)


class ReadOnlyStore:
    """A synchronous, read-only view of a store: made by :func:`open_readonly`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    @property
    def path(self) -> Path:
        return self._path

    def get(self, call_id: str) -> Call | None:
        with self._errors():
            return queries.get(self._conn, call_id)

    def open_calls(self) -> list[Call]:
        with self._errors():
            return queries.open_calls(self._conn)

    def list_calls(self, *, active: bool | None, limit: int, cursor: str | None) -> CallPage:
        with self._errors():
            return queries.list_calls(self._conn, active, limit, cursor)

    def summary(self) -> StoreSummary:
        with self._errors():
            rows = self._conn.execute("SELECT state, count(*) FROM calls GROUP BY state").fetchall()
            (events,) = self._conn.execute("SELECT count(*) FROM events").fetchone()
            return StoreSummary(
                path=self._path,
                schema_version=schema_version(self._conn),
                by_state=dict(rows),
                events=events,
                last_event_id=queries.last_event_id(self._conn),
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: read failed: {exc}") from exc


def open_readonly(directory: Path | str) -> ReadOnlyStore:
    """Open the store in ``directory`` for reading only, without the daemon and beside it.

    Creates no file: with a WAL present (a daemon runs, or one was killed) it reads through
    it; without one the database file is complete and is read as immutable, since a reader
    would otherwise leave ``-wal`` and ``-shm`` files behind, owned by whoever ran ``status``.
    Raises :class:`StoreMissing` if there is no store, :class:`StoreError` if it cannot be
    read or has another schema version.
    """
    path = Path(directory).resolve() / DB_NAME
    if not path.is_file():
        raise StoreMissing(f"no store at {path}: voicecalld has not run with this state directory")
    wal = path.with_name(DB_NAME + "-wal")
    uri = path.as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    try:
        conn = connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read store {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only = ON")
        version = schema_version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot read store {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        if version == 0:
            raise StoreError(f"cannot read store {path}: not a voicecalld store (no schema)")
        raise StoreError(
            f"cannot read store {path}: schema version {version}, this voicecalld reads "
            f"{SCHEMA_VERSION}; use the release that runs the daemon"
        )
    return ReadOnlyStore(conn, path)
