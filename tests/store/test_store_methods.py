"""Every method of the Store protocol, as the SQLite store keeps it."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.calls.model import Call, EndReason, EventType, NewEvent, State
from voicecalld.store.base import DuplicateWebhookKey, RejectedWrite, Store, StoreError
from voicecalld.store.sqlite import SqliteStore

from .factories import T0, FakeClock, created, ended, make_call


async def test_the_sqlite_store_is_a_store(store: SqliteStore) -> None:
    as_protocol: Store = store  # mypy --strict checks SqliteStore against the protocol here
    assert await as_protocol.last_event_id() == 0


async def test_write_returns_the_events_stored_with_increasing_ids(
    store: SqliteStore, clock: FakeClock
) -> None:
    call = make_call(1)
    answered = attrs.evolve(call, state=State.ANSWERED, answered_at=T0)
    stored = await store.write(
        [answered],
        [created(call), NewEvent(EventType.DTMF, answered, {"digit": "5"})],
        webhook_key="k1",
    )
    assert [event.id for event in stored] == [1, 2]
    assert [event.type for event in stored] == [EventType.CREATED, EventType.DTMF]
    assert stored[1].data == {"digit": "5"}
    assert stored[1].call == answered
    assert all(event.at == clock.now for event in stored)
    assert await store.get(call.id) == answered
    assert await store.events_after(0, 10) == stored


async def test_write_upserts_calls(store: SqliteStore) -> None:
    call = make_call(1)
    await store.write([call])
    later = attrs.evolve(call, state=State.RINGING, updated_at=T0 + timedelta(seconds=3))
    await store.write([later])
    assert await store.get(call.id) == later
    assert await store.get("c_missing") is None


async def test_find_by_carrier_call_id_ended_or_not(store: SqliteStore) -> None:
    live, done = make_call(1), ended(make_call(2), T0)
    await store.write([live, done])
    assert live.provider_call_id is not None
    assert done.provider_call_id is not None
    assert await store.find("mock", live.provider_call_id) == live
    assert await store.find("mock", done.provider_call_id) == done
    assert await store.find("twilio", live.provider_call_id) is None
    assert await store.find("mock", "CAunknown") is None


async def test_a_carrier_call_id_names_one_call(store: SqliteStore) -> None:
    await store.write([make_call(1, provider_call_id="CA1"), make_call(2, provider_call_id=None)])
    await store.write([make_call(3, provider_call_id=None)])  # many calls without a carrier id
    await store.write([make_call(4, provider="twilio", provider_call_id="CA1")])  # other carrier
    with pytest.raises(RejectedWrite, match="UNIQUE"):
        await store.write([make_call(5, provider_call_id="CA1")], [created(make_call(5))])
    assert await store.get(make_call(5).id) is None
    assert await store.events_after(0, 10) == []


async def test_open_calls_are_the_calls_not_ended_oldest_first(store: SqliteStore) -> None:
    calls = [make_call(n) for n in (3, 1, 2)]
    await store.write([*calls, ended(make_call(4), T0), ended(make_call(0), T0)])
    assert await store.open_calls() == sorted(calls, key=lambda call: call.created_at)


async def test_open_streams_are_the_open_calls_whose_last_stream_event_is_a_start(
    store: SqliteStore,
) -> None:
    started, stopped, restarted, quiet, gone = (make_call(n) for n in range(1, 6))
    await store.write([started, stopped, restarted, quiet, gone], [])

    def stream(call: Call, kind: EventType) -> NewEvent:
        return NewEvent(kind, call, {"reason": "x"} if kind is EventType.STREAM_STOPPED else {})

    start, stop = EventType.STREAM_STARTED, EventType.STREAM_STOPPED
    await store.write(
        [],
        [
            stream(started, start),
            stream(stopped, start),
            stream(restarted, start),
            stream(gone, start),
            stream(stopped, stop),
            stream(restarted, stop),
            NewEvent(EventType.DTMF, started, {"digit": "1"}),  # not a stream event
            stream(restarted, start),
        ],
    )
    await store.write([ended(gone, T0)])
    assert await store.open_streams() == [started.id, restarted.id]


def owing(call: Call) -> Call:
    return attrs.evolve(call, metadata={**call.metadata, "hangup_owed": True})


async def test_calls_owing_hangup_are_the_marked_ones_oldest_first(store: SqliteStore) -> None:
    first, second = owing(ended(make_call(2), T0)), owing(ended(make_call(1), T0))
    await store.write([first, second, ended(make_call(3), T0), make_call(4)])
    assert await store.calls_owing_hangup() == [second, first]
    settled = attrs.evolve(first, metadata={"n": 2, "message": "héllo"})
    await store.write([settled])
    assert await store.calls_owing_hangup() == [second]


async def test_purge_keeps_a_call_still_owed_a_hangup(store: SqliteStore) -> None:
    owed = owing(ended(make_call(1), T0))
    await store.write([owed], [created(owed)])
    assert await store.purge(ended_before=T0 + timedelta(days=90), keys_before=T0) == 0
    assert await store.calls_owing_hangup() == [owed]
    assert len(await store.events_after(0, 10)) == 1


async def test_an_event_needs_its_call_stored(store: SqliteStore) -> None:
    stranger = make_call(9)
    with pytest.raises(RejectedWrite, match="FOREIGN KEY"):
        await store.write([], [created(stranger)])
    [event] = await store.write([stranger], [created(stranger)])
    [later] = await store.write([], [NewEvent(EventType.STATE, stranger)])  # stored before: fine
    assert later.id > event.id


async def test_events_after_pages_oldest_first(store: SqliteStore) -> None:
    call = make_call(1)
    await store.write([call])
    stored = [(await store.write([], [created(call)]))[0] for _ in range(7)]
    assert await store.events_after(0, 3) == stored[:3]
    assert await store.events_after(stored[2].id, 3) == stored[3:6]
    assert await store.events_after(stored[-1].id, 3) == []
    assert await store.last_event_id() == stored[-1].id
    with pytest.raises(ValueError, match="limit"):
        await store.events_after(0, 0)


async def test_last_event_id_is_zero_on_an_empty_store(store: SqliteStore) -> None:
    assert await store.last_event_id() == 0


async def test_a_replayed_webhook_key_stores_nothing(store: SqliteStore) -> None:
    call = make_call(1)
    await store.write([call], [created(call)], webhook_key="twilio:CA1:ringing")
    ringing = attrs.evolve(call, state=State.RINGING)
    with pytest.raises(DuplicateWebhookKey, match="twilio:CA1:ringing"):
        await store.write([ringing], [created(ringing)], webhook_key="twilio:CA1:ringing")
    assert await store.get(call.id) == call
    assert len(await store.events_after(0, 10)) == 1


async def test_webhook_keys_since_oldest_first(store: SqliteStore, clock: FakeClock) -> None:
    call = make_call(1)
    await store.write([call])
    for key in ("a", "b", "c", "d"):
        await store.write([], webhook_key=key)
        clock.advance(10)
    assert await store.webhook_keys_since(T0) == ["a", "b", "c", "d"]
    assert await store.webhook_keys_since(T0 + timedelta(seconds=15)) == ["c", "d"]
    assert await store.webhook_keys_since(T0 + timedelta(hours=1)) == []


async def test_purge_deletes_old_ended_calls_with_their_events_and_old_keys(
    store: SqliteStore, clock: FakeClock
) -> None:
    old, recent, live = (
        ended(make_call(1), T0),
        ended(make_call(2), T0 + timedelta(days=9)),
        make_call(3),
    )
    await store.write([old, recent, live], [created(old), created(recent), created(live)], "k-old")
    clock.advance(timedelta(days=9).total_seconds())
    await store.write([], webhook_key="k-new")
    last = await store.last_event_id()

    deleted = await store.purge(
        ended_before=T0 + timedelta(days=1), keys_before=T0 + timedelta(days=1)
    )

    assert deleted == 1
    assert await store.get(old.id) is None
    assert await store.get(recent.id) == recent
    assert await store.get(live.id) == live
    assert [event.call.id for event in await store.events_after(0, 10)] == [recent.id, live.id]
    assert await store.webhook_keys_since(T0 - timedelta(days=1)) == ["k-new"]
    assert await store.last_event_id() == last
    # A replay key is forgotten once purged: the filter only needs the retention window.
    await store.write([], webhook_key="k-old")


async def test_purge_never_touches_open_calls_however_old(store: SqliteStore) -> None:
    forgotten = make_call(1, created_at=T0 - timedelta(days=400))
    await store.write([forgotten])
    assert await store.purge(ended_before=T0, keys_before=T0) == 0
    assert await store.open_calls() == [forgotten]


async def test_an_ended_call_without_ended_at_is_purged_by_its_last_update(
    store: SqliteStore,
) -> None:
    odd = attrs.evolve(make_call(1), state=State.ENDED, end_reason=EndReason.LOST)
    await store.write([odd])
    assert await store.open_calls() == []
    assert await store.purge(ended_before=T0 + timedelta(days=1), keys_before=T0) == 1


async def test_list_calls_newest_first_in_pages(store: SqliteStore) -> None:
    calls = [make_call(n) for n in range(7)]
    calls[2] = ended(calls[2], T0)
    calls[5] = ended(calls[5], T0)
    await store.write(calls)
    newest_first = calls[::-1]

    page, cursor = await store.list_calls(active=None, limit=3, cursor=None)
    assert page == newest_first[:3]
    assert cursor is not None
    page, cursor = await store.list_calls(active=None, limit=3, cursor=cursor)
    assert page == newest_first[3:6]
    assert cursor is not None
    page, cursor = await store.list_calls(active=None, limit=3, cursor=cursor)
    assert (page, cursor) == (newest_first[6:], None)

    assert await store.list_calls(active=True, limit=10, cursor=None) == (
        [call for call in newest_first if not call.ended],
        None,
    )
    assert await store.list_calls(active=False, limit=10, cursor=None) == (
        [calls[5], calls[2]],
        None,
    )


async def test_a_full_last_page_has_no_next_cursor(store: SqliteStore) -> None:
    await store.write([make_call(n) for n in range(4)])
    page, cursor = await store.list_calls(active=None, limit=2, cursor=None)
    page, cursor = await store.list_calls(active=None, limit=2, cursor=cursor)
    assert len(page) == 2
    assert cursor is None


@pytest.mark.parametrize("cursor", ["", "garbage!", "bm90IGpzb24", "WzFd", "WyJhIiwxXQ"])
async def test_a_foreign_cursor_is_a_client_error(store: SqliteStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.list_calls(active=None, limit=5, cursor=cursor)


async def test_a_limit_below_one_is_a_client_error(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_calls(active=None, limit=0, cursor=None)


@given(
    offsets=st.lists(st.integers(0, 5), max_size=25),
    ended_every=st.integers(1, 4),
    limit=st.integers(1, 6),
    active=st.sampled_from([None, True, False]),
)
async def test_pages_concatenate_to_the_whole_listing(
    offsets: list[int], ended_every: int, limit: int, active: bool | None
) -> None:
    # Few distinct creation times: ties, broken by id, are the case a cursor gets wrong.
    calls = [make_call(n, created_at=T0 + timedelta(seconds=s)) for n, s in enumerate(offsets)]
    calls = [ended(call, T0) if n % ended_every == 0 else call for n, call in enumerate(calls)]
    expected = sorted(
        (call for call in calls if active is None or active != call.ended),
        key=lambda call: (call.created_at, call.id),
        reverse=True,
    )
    with tempfile.TemporaryDirectory() as directory:
        async with SqliteStore.open(directory) as store:
            await store.write(calls)
            listed: list[Call] = []
            cursor: str | None = None
            while True:
                page, cursor = await store.list_calls(active=active, limit=limit, cursor=cursor)
                assert len(page) <= limit
                listed += page
                if cursor is None:
                    break
                assert len(page) == limit
    assert listed == expected


async def test_reads_and_writes_after_close_raise_store_error(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        await store.write([make_call(1)])
    with pytest.raises(StoreError, match="closed"):
        await store.get(make_call(1).id)
    with pytest.raises(StoreError, match="closed"):
        await store.write([make_call(2)])
