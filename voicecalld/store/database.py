"""The store's database file: its name in the state directory, and how a connection is made.

Two doors open that file: the daemon's store (:mod:`voicecalld.store.sqlite`), which creates and
writes it, and the read-only view for ``voicecalld status`` (:mod:`voicecalld.store.readonly`),
which reads it beside a running daemon. Both take the name and the connection settings from
here, so neither depends on the other and they cannot drift apart.

Invariant: every connection is in autocommit mode, so that transactions are explicit (the
writer's batches, :func:`~voicecalld.store.schema.migrate`), never begun behind a caller's back
by the ``sqlite3`` module.
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["BUSY_TIMEOUT", "DB_NAME", "connect"]

DB_NAME: Final = "voicecalld.db"
BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for a lock held by another connection (a checkpoint, a reader)."""


def connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    # Autocommit: transactions are explicit. Not bound to one thread: worker threads take turns.
    return sqlite3.connect(
        target, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False, uri=uri
    )
