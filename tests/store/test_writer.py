"""The writer: group commit, failures isolated within a batch, cancellation, a writer that dies."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from voicecalld.calls.model import EventType, NewEvent, StoredEvent
from voicecalld.store.base import DuplicateWebhookKey, RejectedWrite, StoreError
from voicecalld.store.database import DB_NAME
from voicecalld.store.sqlite import SqliteStore

from .factories import created, make_call


async def test_concurrent_writers_share_transactions(store: SqliteStore) -> None:
    rounds, writers = 5, 64

    async def writer(n: int) -> None:
        call = make_call(n)
        for _ in range(rounds):
            await store.write([call], [created(call)])

    async with trio.open_nursery() as nursery:
        for n in range(writers):
            nursery.start_soon(writer, n)

    assert store.writes == rounds * writers
    assert store.transactions <= rounds * writers // 8, store.transactions
    ids = [event.id for event in await store.events_after(0, 1000)]
    assert ids == list(range(1, rounds * writers + 1))


async def test_without_group_commit_each_write_is_a_transaction(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path, group_commit=False) as store:
        async with trio.open_nursery() as nursery:
            for n in range(16):
                call = make_call(n)
                nursery.start_soon(store.write, [call], [created(call)])
        assert (store.transactions, store.writes) == (16, 16)
        assert len(await store.events_after(0, 100)) == 16


async def test_ids_follow_submission_order_within_a_batch(store: SqliteStore) -> None:
    results: dict[int, list[StoredEvent]] = {}

    async def writer(n: int) -> None:
        call = make_call(n)
        results[n] = await store.write([call], [created(call), created(call)])

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(writer, n)
            await trio.testing.wait_all_tasks_blocked()  # submitted before the next one starts

    ids = [event.id for n in range(10) for event in results[n]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


async def test_a_failing_write_fails_alone_in_its_batch(store: SqliteStore) -> None:
    await store.write([make_call(0)], webhook_key="seen")
    before = store.transactions
    outcomes: dict[int, object] = {}

    async def writer(n: int) -> None:
        call = make_call(n)
        stranger = created(make_call(1000 + n))  # an event whose call is stored nowhere
        events = [created(call), stranger] if n % 8 == 3 else [created(call)]
        key = "seen" if n % 8 == 5 else f"key-{n}"
        try:
            outcomes[n] = await store.write([call], events, webhook_key=key)
        except StoreError as exc:
            outcomes[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(1, 65):
            nursery.start_soon(writer, n)

    assert store.transactions - before < 8  # the bad ones did share batches with good ones
    for n in range(1, 65):
        if n % 8 == 3:
            assert isinstance(outcomes[n], RejectedWrite), n
            assert await store.get(make_call(n).id) is None  # nothing of it, not even its call
        elif n % 8 == 5:
            assert isinstance(outcomes[n], DuplicateWebhookKey), n
            assert await store.get(make_call(n).id) is None
        else:
            assert isinstance(outcomes[n], list), n
            assert await store.get(make_call(n).id) == make_call(n)
    stored = await store.events_after(0, 1000)
    assert len(stored) == 64 - 16
    assert sorted(event.call.id for event in stored) == sorted(
        make_call(n).id for n in range(1, 65) if n % 8 not in (3, 5)
    )


async def test_the_same_key_twice_in_one_batch_keeps_the_first(store: SqliteStore) -> None:
    outcomes: list[object] = []

    async def writer(n: int) -> None:
        call = make_call(n)
        try:
            outcomes.append(await store.write([call], [created(call)], webhook_key="twice"))
        except DuplicateWebhookKey as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer, 2)

    assert isinstance(outcomes[0], list)
    assert isinstance(outcomes[1], DuplicateWebhookKey)
    assert await store.get(make_call(2).id) is None


async def test_cancelled_waiters_lose_nothing_of_the_others(store: SqliteStore) -> None:
    scopes: dict[int, trio.CancelScope] = {}
    finished: dict[int, list[StoredEvent]] = {}

    async def writer(n: int) -> None:
        call = make_call(n)
        with trio.CancelScope() as scopes[n]:
            finished[n] = await store.write([call], [created(call), created(call)])

    async with trio.open_nursery() as nursery:
        for n in range(32):
            nursery.start_soon(writer, n)
        await trio.testing.wait_all_tasks_blocked()  # every writer waits for its commit
        for n in range(0, 32, 2):
            scopes[n].cancel()

    assert set(finished) >= set(range(1, 32, 2))
    stored = await store.events_after(0, 1000)
    for n in range(32):
        call = make_call(n)
        mine = [event for event in stored if event.call.id == call.id]
        if n in finished:
            assert [event.id for event in mine] == [event.id for event in finished[n]]
        # A cancelled write happened or did not, entirely: its call and both events, or nothing.
        assert len(mine) == (2 if await store.get(call.id) == call else 0)
    later = await store.write([make_call(99)], [created(make_call(99))])
    assert later[0].id == max(event.id for event in stored) + 1


async def test_a_failed_commit_stops_the_writer_and_fails_every_write(tmp_path: Path) -> None:
    serve_failed: list[StoreError] = []

    async def serve(*, task_status: trio.TaskStatus[SqliteStore]) -> None:
        try:
            await SqliteStore.serve(tmp_path, task_status=task_status)
        except StoreError as exc:
            serve_failed.append(exc)

    async with trio.open_nursery() as nursery:
        store: SqliteStore = await nursery.start(serve)
        call = make_call(1)
        await store.write([call])
        # Sabotage from outside: a trigger naming a missing table makes a DTMF event's insert
        # fail with an operational error, which no savepoint can isolate.
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            conn.execute(
                "CREATE TRIGGER boom AFTER INSERT ON events WHEN NEW.type = 'call.dtmf' "
                "BEGIN INSERT INTO nowhere VALUES (1); END"
            )
        conn.close()
        outcomes: list[BaseException] = []

        async def writer(event_type: EventType) -> None:
            try:
                await store.write([call], [NewEvent(event_type, call)])
            except StoreError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as writers:
            for event_type in [EventType.STATE, EventType.DTMF, EventType.STATE]:
                writers.start_soon(writer, event_type)

        assert len(outcomes) == 3
        assert all("no such table: main.nowhere" in str(exc) for exc in outcomes)
        with pytest.raises(StoreError, match="stopped: a commit failed"):
            await store.write([call])
        with pytest.raises(StoreError, match="closed"):
            await store.get(call.id)

    [error] = serve_failed
    assert "nowhere" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    # Nothing of the failed batch reached the file.
    async with SqliteStore.open(tmp_path) as reopened:
        assert await reopened.last_event_id() == 0


async def test_on_commit_sees_every_transaction_in_id_order_before_its_writers_return(
    store: SqliteStore,
) -> None:
    published: list[list[int]] = []
    store.on_commit = lambda events: published.append([event.id for event in events])

    async def writer(n: int) -> None:
        call = make_call(n)
        for round_ in range(3):
            stranger = created(make_call(1000 + n))  # rejected: its call is stored nowhere
            events = [created(call), stranger] if (n + round_) % 7 == 0 else [created(call)]
            try:
                stored = await store.write([call], events)
            except RejectedWrite:
                continue
            seen = {event_id for batch in published for event_id in batch}
            assert {event.id for event in stored} <= seen

    async with trio.open_nursery() as nursery:
        for n in range(64):
            nursery.start_soon(writer, n)

    flat = [event_id for batch in published for event_id in batch]
    assert flat == [event.id for event in await store.events_after(0, 1000)]
    assert flat == sorted(flat)
    assert 1 < len(published) <= store.transactions


async def test_a_failing_on_commit_stops_the_store_after_the_commit(tmp_path: Path) -> None:
    serve_failed: list[BaseException] = []

    async def serve(*, task_status: trio.TaskStatus[SqliteStore]) -> None:
        try:
            await SqliteStore.serve(tmp_path, task_status=task_status)
        except RuntimeError as exc:
            serve_failed.append(exc)

    def broken(events: Sequence[StoredEvent]) -> None:
        raise RuntimeError("feed bug")

    async with trio.open_nursery() as nursery:
        store: SqliteStore = await nursery.start(serve)
        store.on_commit = broken
        [event] = await store.write([make_call(1)], [created(make_call(1))])  # it was committed
        with pytest.raises(StoreError, match="feed bug"):
            await store.write([make_call(2)])
    assert [str(exc) for exc in serve_failed] == ["feed bug"]
    async with SqliteStore.open(tmp_path) as reopened:
        assert await reopened.events_after(0, 10) == [event]


async def test_the_write_called_last_is_the_row_kept(store: SqliteStore) -> None:
    """Writes are queued in the order they are called: the manager writes a call's newest
    version last, and an older one queued after it would bring an ended call back to life."""
    call = make_call(1)
    await store.write([call], [created(call)])
    called: list[str] = []

    async def writer(version: str) -> None:
        called.append(version)  # nothing awaited between this and the write's call
        await store.write([attrs.evolve(call, metadata={"version": version})])

    for _ in range(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "one")
            nursery.start_soon(writer, "other")
        stored = await store.get(call.id)
        assert stored is not None and stored.metadata == {"version": called[-1]}
