"""Nothing is acknowledged before it is durable (SPEC §6): a 201 for a placed call and a 200
for a webhook go out only once the store's write has returned (committed: tests/store)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from voicecalld.carriers.mock import SIGNATURE_HEADER, sign
from voicecalld.store.base import Store
from voicecalld.testing import Daemon, make_config, running


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def store_of(daemon: Daemon) -> Store:
    manager = daemon.runtime.manager
    assert manager is not None
    return manager.store


def hold_writes(daemon: Daemon) -> trio.Event:
    """Make the store's writes wait for the returned event, as a slow disk would."""
    store = store_of(daemon)
    write: Callable[..., Awaitable[Any]] = store.write
    released = trio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        await released.wait()
        return await write(*args, **kwargs)

    store.write = held  # type: ignore[method-assign]
    return released


async def answered_only_after_release(
    released: trio.Event, request: Callable[[], Awaitable[Any]]
) -> Any:
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await request())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.sleep(10.0)  # virtual: far past any answer that did not wait for the write
        assert answers == [], "answered before the write was durable"
        released.set()
    return answers[0]


async def test_a_placed_call_is_answered_once_its_record_is_durable(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        released = hold_writes(daemon)
        answer = await answered_only_after_release(
            released,
            lambda: daemon.api.post("/v1/calls", json={"to": "+15551234567"}, timeout=None),
        )
        assert answer.status_code == 201
        stored = await store_of(daemon).get(answer.json()["id"])
        assert stored is not None


async def test_a_webhook_is_answered_once_its_event_is_durable(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        released = hold_writes(daemon)
        body = orjson.dumps(
            {"event": "initiated", "call_sid": "MK" + "ab" * 16, "from": "+15550001111"}
        )
        headers = {SIGNATURE_HEADER: sign("test-token", body)}
        answer = await answered_only_after_release(
            released,
            lambda: daemon.api.post("/webhooks/mock", content=body, headers=headers, timeout=None),
        )
        assert answer.status_code == 200
        stored = await store_of(daemon).find("mock", "MK" + "ab" * 16)
        assert stored is not None and stored.direction.value == "inbound"
