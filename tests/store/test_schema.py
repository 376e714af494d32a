"""Schema migrations: in order, all or nothing, never onto a newer database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicecalld.store.base import StoreError
from voicecalld.store.database import DB_NAME
from voicecalld.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from voicecalld.store.sqlite import SqliteStore

from .factories import created, make_call


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    yield connection
    connection.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_a_new_database_gets_every_migration_once(conn: sqlite3.Connection) -> None:
    assert migrate(conn) == 0
    assert schema_version(conn) == SCHEMA_VERSION == len(MIGRATIONS)
    assert {"calls", "events", "webhook_keys"} <= tables(conn)
    assert migrate(conn) == SCHEMA_VERSION  # again: nothing to do
    assert schema_version(conn) == SCHEMA_VERSION


def test_an_older_database_gets_the_missing_steps_and_keeps_its_data(
    conn: sqlite3.Connection,
) -> None:
    migrate(conn, MIGRATIONS)
    conn.execute("INSERT INTO webhook_keys (key, seen_at) VALUES ('k', '2026-01-01T00:00:00.000Z')")
    later = [
        *MIGRATIONS,
        ["ALTER TABLE webhook_keys ADD COLUMN provider TEXT NOT NULL DEFAULT 'mock'"],
        ["CREATE TABLE notes (text TEXT)", "INSERT INTO notes SELECT key FROM webhook_keys"],
    ]
    assert migrate(conn, later) == SCHEMA_VERSION
    assert schema_version(conn) == SCHEMA_VERSION + 2
    assert conn.execute("SELECT key, provider FROM webhook_keys").fetchall() == [("k", "mock")]
    assert conn.execute("SELECT text FROM notes").fetchall() == [("k",)]


def test_a_failing_step_leaves_the_database_as_it_was(conn: sqlite3.Connection) -> None:
    migrate(conn, MIGRATIONS)
    before = tables(conn)
    broken = [*MIGRATIONS, ["CREATE TABLE fine (x)"], ["CREATE TABLE calls (x)"]]
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        migrate(conn, broken)
    assert schema_version(conn) == SCHEMA_VERSION
    assert tables(conn) == before
    assert not conn.in_transaction


def test_a_newer_database_is_refused(conn: sqlite3.Connection) -> None:
    migrate(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        migrate(conn)
    assert schema_version(conn) == SCHEMA_VERSION + 1


async def test_the_store_refuses_a_newer_database_naming_it(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        await store.write([make_call(1)], [created(make_call(1))])
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"cannot open store {tmp_path / DB_NAME}: .* newer"):
        async with SqliteStore.open(tmp_path):
            pass
