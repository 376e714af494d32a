"""Crash safety: a writer killed with SIGKILL at random points loses no acknowledged write.

A subprocess (``crash_writer.py``) writes through :class:`SqliteStore` and prints each event id
once ``write()`` returned. After every kill the database must pass ``integrity_check`` and hold
every printed id, and the next run must give ids above every id already stored. The kill times
are random (seeded, the seed is in the failure message) and include kills during start-up,
while the previous run's WAL is being recovered. What this cannot show is loss of power: the
kernel keeps a killed process's writes, so ``synchronous=FULL`` is taken on SQLite's word.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import voicecalld
from voicecalld.store.database import DB_NAME
from voicecalld.store.readonly import open_readonly

KILLS = 30
HELPER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(voicecalld.__file__).resolve().parents[1]


def start(directory: Path, out: Path, err: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(HELPER), str(directory)], stdout=stdout, stderr=stderr, env=env
        )


def wait_until_ready(out: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while not out.read_bytes().startswith(b"ready\n"):
        assert proc.poll() is None, "the writer died on its own"
        assert time.monotonic() < deadline, "the writer never became ready"
        time.sleep(0.005)


def acknowledged(out: Path) -> list[int]:
    """Ids on complete lines: a line cut by the kill was not acknowledged."""
    *lines, _partial = out.read_bytes().split(b"\n")
    return [int(word) for line in lines if line != b"ready" for word in line.split()]


def stored_ids(db: Path) -> list[int]:
    # Read-only, so the hot WAL of the killed writer stays for the next run to recover.
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orphans = "SELECT count(*) FROM events WHERE call_id NOT IN (SELECT id FROM calls)"
        assert conn.execute(orphans).fetchone() == (0,)
        return [event_id for (event_id,) in conn.execute("SELECT id FROM events ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.slow
def test_no_acknowledged_write_is_lost_to_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory, out, err = tmp_path / "state", tmp_path / "out", tmp_path / "err"
    db = directory / DB_NAME
    highest = 0
    acknowledged_total = 0
    for kill in range(KILLS):
        proc = start(directory, out, err)
        try:
            if kill == 0 or kill % 5:
                wait_until_ready(out, proc)
                time.sleep(rng.uniform(0, 0.08))
            else:  # somewhere in start-up: opening, recovering the WAL, migrating
                time.sleep(rng.uniform(0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        context = f"seed {seed}, kill {kill}: {err.read_text()}"
        assert proc.returncode == -signal.SIGKILL, context

        acked = acknowledged(out)
        present = stored_ids(db)
        assert set(acked) <= set(present), context
        assert present == sorted(set(present)), context
        new = [event_id for event_id in present if event_id > highest]
        assert set(acked) <= set(new), f"an acknowledged id was not new: {context}"
        highest = max(present, default=highest)
        acknowledged_total += len(acked)
    with open_readonly(directory) as view:
        assert view.summary().last_event_id >= highest
    assert acknowledged_total > KILLS, "too few writes acknowledged to mean anything"
