"""Opening and closing: start-up failures, reopening, nothing left behind."""

from __future__ import annotations

import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from voicecalld.store.base import StoreError
from voicecalld.store.database import DB_NAME
from voicecalld.store.sqlite import SqliteStore

from .factories import T0, created, ended, make_call


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_opened_and_closed_a_hundred_times_leaves_nothing_behind(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:  # warm up: the schema, trio's thread cache
        await store.write([make_call(0)], [created(make_call(0))])
    fds, threads = open_fds(), threading.active_count()

    for n in range(1, 101):
        async with SqliteStore.open(tmp_path) as store:
            [event] = await store.write([make_call(n)], [created(make_call(n))])
            assert event.id == n + 1
            assert await store.get(make_call(n).id) == make_call(n)

    assert open_fds() == fds
    assert threading.active_count() <= threads + 2  # trio's cached idle workers, reused


async def test_cancelling_serve_closes_the_store(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        store: SqliteStore = await nursery.start(SqliteStore.serve, tmp_path)
        await store.write([make_call(1)])
        nursery.cancel_scope.cancel()
    # The WAL is checkpointed and removed by the last close: only the database remains.
    assert os.listdir(tmp_path) == [DB_NAME]
    async with SqliteStore.open(tmp_path) as reopened:
        assert await reopened.get(make_call(1).id) == make_call(1)


async def test_event_ids_keep_increasing_across_restarts_and_purges(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        done = ended(make_call(1), T0)
        first = await store.write([done], [created(done), created(done), created(done)])
    async with SqliteStore.open(tmp_path) as store:
        assert await store.last_event_id() == 3
        assert await store.purge(ended_before=T0 + timedelta(days=1), keys_before=T0) == 1
        assert await store.events_after(0, 10) == []
    async with SqliteStore.open(tmp_path) as store:
        assert await store.last_event_id() == 3
        [after] = await store.write([make_call(2)], [created(make_call(2))])
    assert after.id == first[-1].id + 1 == 4


async def test_the_state_directory_is_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "voicecalld"
    async with SqliteStore.open(directory) as store:
        await store.write([make_call(1)])
        assert store.path == directory / DB_NAME
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in os.listdir(directory):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


async def test_a_state_directory_that_is_a_file_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=rf"cannot open store {blocker / DB_NAME}: .*File exists"):
        async with SqliteStore.open(blocker):
            pass


async def test_a_file_that_is_not_a_database_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match=rf"cannot open store {tmp_path / DB_NAME}: .*database"):
        async with SqliteStore.open(tmp_path):
            pass
    (tmp_path / DB_NAME).unlink()
    async with SqliteStore.open(tmp_path) as store:
        assert await store.last_event_id() == 0
