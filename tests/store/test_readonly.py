"""The read-only view of `voicecalld status`: beside a daemon or without one, creating nothing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from voicecalld.store.base import StoreError
from voicecalld.store.database import DB_NAME
from voicecalld.store.readonly import StoreMissing, open_readonly
from voicecalld.store.schema import SCHEMA_VERSION
from voicecalld.store.sqlite import SqliteStore

from .factories import T0, created, ended, make_call


def listing(directory: Path) -> dict[str, str]:
    """Each file of ``directory`` and a digest of its content."""
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(directory))
    }


async def fill(store: SqliteStore) -> None:
    calls = [make_call(1), ended(make_call(2), T0), make_call(3)]
    await store.write(calls, [created(call) for call in calls])


async def test_reads_beside_a_running_daemon(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        await fill(store)
        before = listing(tmp_path)
        with open_readonly(tmp_path) as view:
            assert view.path == tmp_path / DB_NAME  # pytest's tmp_path is resolved
            assert view.get(make_call(1).id) == make_call(1)
            assert view.open_calls() == [make_call(1), make_call(3)]
            page, cursor = view.list_calls(active=None, limit=2, cursor=None)
            assert page == [make_call(3), ended(make_call(2), T0)]
            assert view.list_calls(active=None, limit=2, cursor=cursor) == ([make_call(1)], None)
            summary = view.summary()
            # It reads the latest commit, still in the WAL.
            await store.write([ended(make_call(3), T0)])
            assert view.summary().open_calls == 1
        assert listing(tmp_path).keys() == before.keys()
    assert summary.schema_version == SCHEMA_VERSION
    assert summary.by_state == {"initiated": 2, "ended": 1}
    assert (summary.calls, summary.open_calls) == (3, 2)
    assert (summary.events, summary.last_event_id) == (3, 3)


async def test_reads_without_a_daemon_creating_and_changing_nothing(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        await fill(store)
    before = listing(tmp_path)
    with open_readonly(tmp_path) as view:
        assert view.summary().calls == 3
        assert view.open_calls() == [make_call(1), make_call(3)]
    assert listing(tmp_path) == before


def test_a_missing_store_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        StoreMissing, match=rf"no store at {tmp_path / DB_NAME}: voicecalld has not"
    ):
        open_readonly(tmp_path)
    with pytest.raises(FileNotFoundError):  # what `status` catches
        open_readonly(tmp_path / "never-made")
    assert os.listdir(tmp_path) == []


def test_a_database_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / DB_NAME).close()
    with pytest.raises(StoreError, match="not a voicecalld store"):
        open_readonly(tmp_path)


async def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path):
        pass
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        open_readonly(tmp_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot read store"):
        open_readonly(tmp_path)
