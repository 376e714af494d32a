"""``GET /v1/events``: server-sent events from the durable log, resumable (SPEC §5)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import pytest
import trio
import trio.testing

from tests.support import EventStream
from voicecalld.calls.feed import Feed
from voicecalld.calls.model import Call, Direction, EventType, StoredEvent
from voicecalld.metrics import Metrics
from voicecalld.testing import Daemon, make_config, running

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def collect(
    daemon: Daemon, until: str, headers: dict[str, str] | None = None, limit: int = 50
) -> list[dict[str, str]]:
    stream = await EventStream.open(f"{daemon.url}/v1/events", {**AUTH, **(headers or {})})
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        events: list[dict[str, str]] = []
        while len(events) < limit:
            event = await stream.next()
            if "comment" not in event:
                events.append(event)
                if event["event"] == until:
                    break
        return events
    finally:
        await stream.aclose()


async def test_a_call_lifecycle_streams_in_order(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path)) as daemon, trio.open_nursery() as nursery:
        got: list[dict[str, Any]] = []

        async def listen() -> None:
            got.extend(await collect(daemon, "call.ended"))

        nursery.start_soon(listen)
        await trio.sleep(0.5)  # subscribed
        response = await daemon.api.post(
            "/v1/calls", json={"to": "+15551234567", "mode": "notify", "message": "hi"}
        )
        call_id = response.json()["id"]
        with trio.fail_after(120):
            while not got:
                await trio.sleep(1)
        ids = [int(e["id"]) for e in got]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        kinds = [e["event"] for e in got]
        assert kinds[0] == "call.created"
        assert kinds[-1] == "call.ended"
        assert {"call.ringing", "call.answered"} <= set(kinds)
        data = [orjson.loads(e["data"]) for e in got]
        assert all(d["call"]["id"] == call_id for d in data)
        assert all(d["type"] == e["event"] for d, e in zip(data, got, strict=True))
        assert data[-1]["call"]["end_reason"] == "completed"


async def test_resume_with_last_event_id_replays_what_was_missed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        await daemon.api.post(
            "/v1/calls", json={"to": "+15551234567", "mode": "notify", "message": "hi"}
        )
        while daemon.manager.calls:
            await trio.sleep(1)
        stored = await daemon.manager.store.events_after(0, 100)
        assert len(stored) >= 4
        resumed = await collect(daemon, "call.ended", headers={"Last-Event-ID": str(stored[1].id)})
        assert [int(e["id"]) for e in resumed] == [e.id for e in stored[2:]]


async def test_idle_streams_get_heartbeats(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running(make_config(tmp_path)) as daemon:
        stream = await EventStream.open(f"{daemon.url}/v1/events", AUTH)
        comments = [(await stream.next()).get("comment") for _ in range(2)]
        await stream.aclose()
        assert comments == ["connected", "keepalive"]


async def test_events_need_the_token_and_a_numeric_resume_id(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon:
        # "²" (latin-1 on the wire) is a digit to str.isdigit(), not to int(); 10**30 is past
        # any SQLite integer: both crashed the stream after its 200
        for resume in (b"abc", "\u00b2".encode("latin-1"), b"1" * 30, b"-1"):
            bad = await daemon.api.get("/v1/events", headers={b"Last-Event-ID": resume})
            assert bad.status_code == 400, resume
        # an id no event here ever had (another state dir's): it withheld every event to come
        with trio.fail_after(10):  # it used to be an endless 200 stream
            ahead = await daemon.api.get("/v1/events", headers={"Last-Event-ID": "999999999"})
        assert ahead.status_code == 400
        assert "ahead of every event" in ahead.json()["error"]["message"]
        anonymous = await daemon.api.get("/v1/events", headers={"Authorization": ""})
        assert anonymous.status_code == 401


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stored(event_id: int) -> StoredEvent:
    call = Call(
        id="c_1",
        provider="mock",
        direction=Direction.INBOUND,
        from_number="+1555",
        to="+1556",
        created_at=T0,
        updated_at=T0,
    )
    return StoredEvent(event_id, EventType.CREATED, call, T0)


async def test_a_slow_subscriber_is_dropped_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    feed = Feed(metrics, buffer=2)
    with feed.subscribe() as slow, feed.subscribe() as fast:
        feed.publish([stored(1), stored(2)])
        assert (await fast.receive.receive()).id == 1
        assert (await fast.receive.receive()).id == 2
        feed.publish([stored(3)])  # the slow one's buffer is full: dropped
        assert len(feed) == 1
        assert (await fast.receive.receive()).id == 3
        assert [(await slow.receive.receive()).id for _ in range(2)] == [1, 2]
        with pytest.raises(trio.EndOfChannel):
            await slow.receive.receive()
    assert metrics.sse_dropped.get() == 1
    assert "dropping a slow event subscriber" in caplog.text


async def test_a_slow_subscriber_over_http_is_dropped_then_resumes_by_id(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops reading: its socket fills, then its buffer of events; the stream
    ends (the call events never wait for it) and it resumes from its last id, losing nothing."""
    async with running(make_config(tmp_path)) as daemon:
        daemon.manager.feed.buffer = 4  # instead of 1024: a few calls' events fill it
        url = httpx.URL(daemon.url)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # a small window
        await sock.connect((url.host, url.port))
        client = trio.SocketStream(sock)
        request = b"GET /v1/events HTTP/1.1\r\nHost: voicecalld\r\nAuthorization: Bearer test-token"
        await client.send_all(request + b"\r\n\r\n")
        await trio.sleep(0.5)  # subscribed
        for _ in range(30):  # not read meanwhile: hundreds of events, tens of kilobytes
            await daemon.api.post("/v1/calls", json={"to": "+15551234567", "message": "hi"})
        while daemon.manager.calls:
            await trio.sleep(1)
        stored = await daemon.manager.store.events_after(0, 1000)

        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="GET", target="/v1/events", headers=[("Host", "x")]))
        body = b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(await client.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break  # the stream ended: the subscriber was dropped
        await client.aclose()
        got = [int(line[4:]) for line in body.decode().splitlines() if line.startswith("id: ")]
        assert got == [e.id for e in stored[: len(got)]], "in order, none skipped"
        assert len(got) < len(stored), "dropped before the end"
        assert "dropping a slow event subscriber" in caplog.text

        missed = stored[len(got) :]
        resume = {"Last-Event-ID": str(got[-1])}
        resumed = await collect(daemon, "(every event)", resume, limit=len(missed))
        assert [int(e["id"]) for e in resumed] == [e.id for e in missed]
