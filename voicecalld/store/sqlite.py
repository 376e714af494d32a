"""The embedded store: one SQLite file, ``voicecalld.db``, in the state directory.

Invariants, and why:

- **One writer, serialized, off the event loop.** Every write and purge is queued to one writer
  task, which runs all that is pending in ONE transaction in a worker thread, commits it
  (WAL, ``synchronous=FULL``: durable when COMMIT returns), and only then wakes the callers.
  So :meth:`SqliteStore.write` returns only after its write is durable, and concurrent writers
  share one fsync (group commit) instead of queueing for one each. A write is queued before
  its caller first awaits, so writes are applied in the order they were called.
- **Writes are isolated inside a batch.** A write that breaks a constraint is rolled back alone
  and fails alone (:class:`RejectedWrite`); the others of its batch commit. A batch is first
  applied without savepoints, since nearly every batch is all good; only when one write fails
  is it applied again with a savepoint per write. Event ids are assigned in submission order,
  so they increase in commit order.
- **A writer that stops fails everyone, hangs no one.** A batch whose transaction fails (disk
  full, I/O error) fails all its writes with :class:`StoreError` and stops the writer, which
  raises out of :meth:`SqliteStore.serve` so the runtime restarts; pending and later writes
  raise :class:`StoreError` at once. A write already handed to the writer is committed even if
  its caller is cancelled while waiting: whether a cancelled write happened is unknown to its
  caller, never half-done.
- **Reads never wait for the writer.** They run in a worker thread on a second connection (WAL
  lets it read the last commit while a batch is being written), one at a time.
- **Nothing outlives** :meth:`SqliteStore.serve`: both connections are closed in its
  ``finally`` (shielded, after the writer stopped and in-flight reads finished), so a process
  may open and close a store any number of times.

One process per store is the runtime's rule, kept by the state directory's lock
(:mod:`voicecalld.statedir`), taken before the store is opened.

The SQL it runs is :mod:`voicecalld.store.queries`, shared with the read-only view for
``voicecalld status`` (:mod:`voicecalld.store.readonly`); the file's name and connection
settings are :mod:`voicecalld.store.database`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import attrs
import trio

from voicecalld.calls.model import Call, NewEvent, StoredEvent, format_time, parse_time
from voicecalld.store import queries
from voicecalld.store.base import CallPage, RejectedWrite, StoreError
from voicecalld.store.database import DB_NAME, connect
from voicecalld.store.schema import SQLITE_MIN, migrate

__all__ = ["SqliteStore"]

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- opening and closing -------------------------------------------------------------------


@attrs.define
class _Files:
    """What an open store holds: the writer's connection and the reader's."""

    writer: sqlite3.Connection
    reader: sqlite3.Connection

    def close(self) -> None:
        """Reader first, so that closing the writer (the last connection) checkpoints the WAL
        into the database and removes it."""
        try:
            self.reader.close()
        finally:
            self.writer.close()


def _open(directory: Path) -> _Files:
    """Open, configure and migrate the store in ``directory`` (created 0700 if missing).

    Blocking: runs in a worker thread. Every failure is a :class:`StoreError` naming the path.
    """
    path = directory / DB_NAME
    if sqlite3.sqlite_version_info < SQLITE_MIN:
        raise StoreError(
            f"cannot open store {path}: SQLite {sqlite3.sqlite_version} is too old, "
            f"{'.'.join(map(str, SQLITE_MIN))} or newer is needed"
        )
    with contextlib.ExitStack() as undo:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created 0600 before SQLite sees it: its -wal and -shm copy these permissions,
            # and the calls in it are personal data.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            writer = connect(str(path))
            undo.callback(writer.close)
            (mode,) = writer.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise StoreError(f"the file system refused WAL mode (journal_mode is {mode})")
            writer.execute("PRAGMA synchronous = FULL")
            writer.execute("PRAGMA foreign_keys = ON")
            migrate(writer)
            reader = connect(str(path))
            undo.callback(reader.close)
            reader.execute("PRAGMA query_only = ON")
        except (StoreError, OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        undo.pop_all()
    return _Files(writer=writer, reader=reader)


# --- the daemon's store ----------------------------------------------------------------------


class _Op(Generic[T]):
    """One queued write or purge: applied by the writer thread, then its waiter is woken.

    ``publishes``: the result is the op's stored events, for :attr:`SqliteStore.on_commit`.
    """

    __slots__ = ("apply", "done", "error", "publishes", "result")

    def __init__(self, apply: Callable[[sqlite3.Connection], T], *, publishes: bool) -> None:
        self.apply = apply
        self.publishes = publishes
        self.done = trio.Event()
        self.result: T | None = None
        self.error: StoreError | None = None

    def fail(self, error: StoreError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class SqliteStore:
    """The :class:`~voicecalld.store.base.Store` of one state directory, for one trio run.

    Opened by :meth:`serve` inside the runtime's nursery::

        store = await nursery.start(SqliteStore.serve, config.state_dir)

    or by :meth:`open` where a nursery of its own is simpler (tools, tests)::

        async with SqliteStore.open(directory) as store:
            await store.write([call], [NewEvent(EventType.CREATED, call)])

    ``group_commit=False`` commits each write in its own transaction: the same code path with
    batches of one, kept as the baseline the benchmark measures group commit against.
    """

    def __init__(
        self,
        files: _Files,
        path: Path,
        *,
        group_commit: bool,
        clock: Callable[[], datetime],
    ) -> None:
        self._files = files
        self._path = path
        self._group_commit = group_commit
        self._clock = clock
        self._pending: list[_Op[Any]] = []
        self._wakeup = trio.Event()
        self._stopped: str | None = None
        """Why writes are refused (``None`` while the writer runs)."""
        self._closed = False
        # Each connection is used by one thread at a time: a limiter of one per connection is
        # its mutex, and keeps store I/O off trio's shared default thread limiter.
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._transactions = 0
        self._writes = 0
        self.on_commit: Callable[[Sequence[StoredEvent]], None] | None = None
        """Called by the writer with each transaction's events, in id order, before any of its
        writers returns (set it to feed live subscribers: writers wake in no set order, so
        publishing from their return would reorder ids). It must not block; if it raises, the
        store stops."""

    @classmethod
    async def serve(
        cls,
        directory: Path | str,
        *,
        group_commit: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        task_status: trio.TaskStatus[SqliteStore] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the store in ``directory``, report it started, and write until cancelled.

        Raises :class:`StoreError` if it cannot be opened (before ``started``: the start-up
        step fails) or if a commit fails later (the runtime fails and is restarted).
        Cancellation closes everything before returning; commits in flight finish first.
        """
        directory = Path(directory)
        files = await trio.to_thread.run_sync(_open, directory)
        store = cls(files, directory / DB_NAME, group_commit=group_commit, clock=clock)
        try:
            task_status.started(store)
            await store._run_writer()
        finally:
            with trio.CancelScope(shield=True):
                await store._close()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        directory: Path | str,
        *,
        group_commit: bool = True,
        clock: Callable[[], datetime] = _utcnow,
    ) -> AsyncIterator[SqliteStore]:
        """The store for as long as the ``async with`` lasts, its writer in a nursery of its own.

        A store that cannot be opened raises :class:`StoreError` itself; once open, the writer
        runs in a nursery, so an exception leaving the body comes wrapped in an exception group.
        """
        files = await trio.to_thread.run_sync(_open, Path(directory))
        store = cls(files, Path(directory) / DB_NAME, group_commit=group_commit, clock=clock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store._run_writer)
                yield store
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store._close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def transactions(self) -> int:
        """Transactions committed so far (with :attr:`writes`: how well group commit batches)."""
        return self._transactions

    @property
    def writes(self) -> int:
        """Writes and purges committed so far (rejected ones excluded)."""
        return self._writes

    # --- writes

    async def write(
        self,
        calls: Sequence[Call],
        events: Sequence[NewEvent] = (),
        webhook_key: str | None = None,
    ) -> list[StoredEvent]:
        """Upsert ``calls``, append ``events`` and record ``webhook_key``, durably and atomically.

        Returns the events as stored, in the order given, once committed. Raises
        :class:`DuplicateWebhookKey` for a replay, :class:`RejectedWrite` for a write that
        breaks a constraint (each event's call must be stored, by this write or before; a
        carrier call id belongs to one call), :class:`StoreError` once the store has stopped.
        Calls' metadata must be JSON (``TypeError`` otherwise, before anything is queued).
        """
        # Truncated as stored, so the events returned equal the events read back.
        now = parse_time(format_time(self._clock()))
        at = format_time(now)
        # each call as JSON once, though it is usually both a row and its events' snapshot
        records = {id(call): call.to_json() for call in (*calls, *(e.call for e in events))}
        call_rows = [queries.call_row(call, records[id(call)]) for call in calls]
        event_rows = [
            (
                event.type.value,
                event.call.id,
                at,
                queries.dumps({"call": records[id(event.call)], "data": event.data}),
            )
            for event in events
        ]
        apply = partial(
            queries.apply_write,
            call_rows=call_rows,
            events=events,
            event_rows=event_rows,
            webhook_key=webhook_key,
            now=now,
        )
        return await self._submit(apply, publishes=True)

    async def purge(self, *, ended_before: datetime, keys_before: datetime) -> int:
        """Delete calls ended before ``ended_before`` with their events (not those still owed a
        carrier hang-up), and replay keys seen before ``keys_before``, in one transaction of the
        writer. Returns the calls deleted.

        Event ids are not reused after a purge (AUTOINCREMENT keeps the highest ever given).
        """
        return await self._submit(
            partial(
                queries.apply_purge,
                ended_before=format_time(ended_before),
                keys_before=format_time(keys_before),
            )
        )

    async def _submit(
        self, apply: Callable[[sqlite3.Connection], T], *, publishes: bool = False
    ) -> T:
        # Queued before anything is awaited: writes are applied in the order they are called,
        # so a call's newest version, written last, is the row that stays.
        if self._stopped is not None:
            await trio.lowlevel.checkpoint()
            raise StoreError(self._stopped)
        op = _Op(apply, publishes=publishes)
        self._pending.append(op)
        self._wakeup.set()
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]  # set whenever error is not

    async def _run_writer(self) -> None:
        batch: list[_Op[Any]] = []
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                take = len(self._pending) if self._group_commit else 1
                batch, self._pending = self._pending[:take], self._pending[take:]
                if self._pending:
                    self._wakeup.set()
                # Not abandoned on cancel: a commit in flight finishes and its waiters hear.
                await trio.to_thread.run_sync(self._commit, batch, limiter=self._write_limiter)
                self._transactions += 1
                committed: list[StoredEvent] = []
                for op in batch:
                    if op.error is None:
                        self._writes += 1
                        if op.publishes:
                            committed += cast("list[StoredEvent]", op.result)
                    op.done.set()
                batch = []
                # Waiters were only rescheduled: none runs before the hook has seen the batch.
                if committed and self.on_commit is not None:
                    self.on_commit(committed)
        except sqlite3.Error as exc:
            self._stopped = f"store {self._path} stopped: a commit failed: {exc}"
            raise StoreError(self._stopped) from exc
        except Exception as exc:
            self._stopped = f"store {self._path} stopped: {exc!r}"
            raise
        finally:
            if self._stopped is None:
                self._stopped = f"store {self._path} is closed"
            for op in [*batch, *self._pending]:
                op.fail(StoreError(self._stopped))
            self._pending = []

    def _commit(self, batch: Sequence[_Op[Any]]) -> None:
        """Apply ``batch`` in one transaction (writer thread).

        Optimistically first, with no per-op savepoints: nearly every batch is all good. If an
        op fails, the transaction is rolled back and the batch applied again with each op under
        a savepoint, so that only the failing op fails.
        """
        conn = self._files.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                op.result = op.apply(conn)
            conn.execute("COMMIT")
            return
        except (RejectedWrite, sqlite3.IntegrityError):
            conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._commit_one_by_one(batch)

    def _commit_one_by_one(self, batch: Sequence[_Op[Any]]) -> None:
        """Apply ``batch`` in one transaction, each op under a savepoint (writer thread)."""
        conn = self._files.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                op.result = None
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.apply(conn)
                except RejectedWrite as exc:
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO op")
                    op.error = RejectedWrite(f"write rejected: {exc}")
                    op.error.__cause__ = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    async def _close(self) -> None:
        """Close the connections once in-flight reads are done (call shielded)."""
        self._closed = True
        await trio.to_thread.run_sync(self._files.close, limiter=self._read_limiter)

    # --- reads

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._closed:
                raise StoreError(f"store {self._path} is closed")
            return query(self._files.reader)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._read_limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: read failed: {exc}") from exc

    async def get(self, call_id: str) -> Call | None:
        return await self._read(partial(queries.get, call_id=call_id))

    async def find(self, provider: str, provider_call_id: str) -> Call | None:
        """The call a carrier knows by ``provider_call_id`` (ended or not)."""
        return await self._read(
            partial(queries.find, provider=provider, provider_call_id=provider_call_id)
        )

    async def open_calls(self) -> list[Call]:
        """Every call not yet ended, oldest first: what reconciliation starts from."""
        return await self._read(queries.open_calls)

    async def open_streams(self) -> list[str]:
        """The ids of calls not ended whose last stream event is ``stream.started``."""
        return await self._read(queries.open_streams)

    async def calls_owing_hangup(self) -> list[Call]:
        """Calls whose carrier hang-up is still owed (``metadata.hangup_owed`` true; the manager
        marks ended calls only), oldest first."""
        return await self._read(queries.calls_owing_hangup)

    async def list_calls(self, *, active: bool | None, limit: int, cursor: str | None) -> CallPage:
        """Calls newest first by ``(created_at, id)``; ``ValueError`` for a ``limit`` below 1 or
        a cursor this store did not make (a client error, not a store failure)."""
        return await self._read(
            partial(queries.list_calls, active=active, limit=limit, cursor=cursor)
        )

    async def events_after(self, event_id: int, limit: int) -> list[StoredEvent]:
        """Events with ids greater than ``event_id``, oldest first (SSE resume)."""
        return await self._read(partial(queries.events_after, event_id=event_id, limit=limit))

    async def last_event_id(self) -> int:
        """The highest event id ever committed (0 if none), purges notwithstanding."""
        return await self._read(queries.last_event_id)

    async def webhook_keys_since(self, moment: datetime) -> list[str]:
        """Replay keys recorded at or after ``moment``, oldest first, to warm the replay filter."""
        return await self._read(partial(queries.webhook_keys_since, moment=moment))
