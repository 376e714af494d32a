"""The live event feed behind ``GET /v1/events``: committed events, fanned out to subscribers.

Only events already durable in the store are published, so an id a client sees is an id it can
resume from. Each subscriber has a bounded buffer; one that falls behind is dropped (its stream
ends, logged) instead of growing memory or slowing the calls: it reconnects with
``Last-Event-ID`` and catches up from the store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from voicecalld.calls.model import StoredEvent
from voicecalld.metrics import Metrics

__all__ = ["Feed", "Subscription"]

log = logging.getLogger("voicecalld.events")


class Subscription:
    def __init__(
        self,
        feed: Feed,
        send: trio.MemorySendChannel[StoredEvent],
        receive: trio.MemoryReceiveChannel[StoredEvent],
    ) -> None:
        self._feed = feed
        self._send = send
        self.receive = receive

    def close(self) -> None:
        self._feed._subscribers.discard(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
        self.receive.close()


class Feed:
    def __init__(self, metrics: Metrics, buffer: int = 1024) -> None:
        self._metrics = metrics
        self.buffer = buffer
        """Events a subscriber may fall behind by before it is dropped (for new subscribers)."""
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        """A new subscriber; events published from now on reach it (use it as a context manager)."""
        send, receive = trio.open_memory_channel[StoredEvent](self.buffer)
        subscription = Subscription(self, send, receive)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, events: Sequence[StoredEvent]) -> None:
        for subscription in list(self._subscribers):
            try:
                for event in events:
                    subscription._send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("dropping a slow event subscriber", extra={"buffer": self.buffer})
                self._metrics.sse_dropped.inc()
                subscription.close()
            except trio.ClosedResourceError:
                subscription.close()

    def __len__(self) -> int:
        return len(self._subscribers)
