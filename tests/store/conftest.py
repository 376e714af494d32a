"""Fixtures of the store's tests: a fake clock and an open store in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voicecalld.store.sqlite import SqliteStore

from .factories import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.open(tmp_path, clock=clock) as opened:
        yield opened
