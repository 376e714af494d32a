"""``GET /v1/events``: the call events as server-sent events, resumable (SPEC §5).

Each event is ``id: <n>``, ``event: <type>``, ``data: <json>`` where ``n`` is the event's id in
the durable log. A client that reconnects with ``Last-Event-ID`` first gets every stored event
after that id, then the live ones: it subscribes *before* reading the backlog and skips ids it
already sent, so no event falls in the gap between the two. A comment line every
:data:`HEARTBEAT` seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import logging
from typing import Final

import orjson
import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import StoredEvent
from voicecalld.config import Config
from voicecalld.http.api import authorized
from voicecalld.http.app import Route
from voicecalld.http.asgi import Request, Response, Send, error
from voicecalld.metrics import Metrics

__all__ = ["HEARTBEAT", "format_event", "routes"]

log = logging.getLogger("voicecalld.events")

HEARTBEAT: Final = 15.0
MAX_ID_DIGITS: Final = 18
"""Event ids are SQLite integers (below 2**63): a longer Last-Event-ID is no id of ours."""
BACKLOG_PAGE: Final = 500


def format_event(event: StoredEvent) -> bytes:
    data = orjson.dumps(event.to_json())
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.value.encode(), data)


def routes(manager: CallManager, token: str, config: Config, metrics: Metrics) -> list[Route]:
    async def events(request: Request, _params: dict[str, str]) -> Response:
        if not authorized(request, token):
            request.note = "bad or missing token"
            return error(401, "unauthorized", "a valid bearer token is required")
        resume = request.headers.get("last-event-id", "").strip()
        if resume and not (resume.isascii() and resume.isdigit() and len(resume) <= MAX_ID_DIGITS):
            return error(400, "bad_request", "Last-Event-ID: expected an event id")
        if resume and int(resume) > await manager.store.last_event_id():
            # an id this store never gave (another state dir's): resuming after it would
            # withhold every event to come until the ids caught up
            return error(400, "bad_request", "Last-Event-ID: ahead of every event stored here")

        async def stream(send: Send) -> int:
            headers = [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            dropped = False
            with manager.feed.subscribe() as subscription:
                async with trio.open_nursery() as nursery:

                    async def until_gone() -> None:
                        await request.disconnected()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_gone)
                    last = int(resume) if resume else None
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b": connected\n\n",
                            "more_body": True,
                        }
                    )
                    if last is not None:
                        last = await _backlog(send, last)
                    while True:
                        with trio.move_on_after(HEARTBEAT) as idle:
                            try:
                                event = await subscription.receive.receive()
                            except trio.EndOfChannel:  # dropped as too slow: it resumes by id
                                nursery.cancel_scope.cancel()
                                dropped = True
                                break
                        if idle.cancelled_caught:
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": b": keepalive\n\n",
                                    "more_body": True,
                                }
                            )
                            continue
                        if last is not None and event.id <= last:
                            continue
                        await send(
                            {
                                "type": "http.response.body",
                                "body": format_event(event),
                                "more_body": True,
                            }
                        )
                        last = event.id
            if dropped:  # a clean end of the response: the client sees the stream is over
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200

        return stream

    async def _backlog(send: Send, after: int) -> int:
        while True:
            page = await manager.store.events_after(after, BACKLOG_PAGE)
            for event in page:
                await send(
                    {"type": "http.response.body", "body": format_event(event), "more_body": True}
                )
                after = event.id
            if len(page) < BACKLOG_PAGE:
                return after

    return [Route("/v1/events", frozenset({"GET"}), events)]
