"""Delivering webhooks to voicecalld, as a carrier does: over HTTP, timed, retried, counted.

A delivery is one POST of exact bytes (:class:`~.dialect.Delivery`). :meth:`Sender.send`
retries as carriers do when the webhook did not get through (no connection, a timeout, 408,
429 or 5xx: the event was not applied), at most ``attempts`` times with doubling pauses,
building each new attempt with ``make(attempt)`` (Telnyx counts ``meta.attempt`` and signs
afresh; Twilio sends the same request). A 4xx other than 408/429 is voicecalld's final word
and is not retried. Every attempt is counted in the :class:`~.stats.Tally` under
``(what, answer)``, its round trip under the ``webhook`` latency.

``slow_body`` sends the body in two halves that many seconds apart (a slow carrier or
network), with its ``content-length`` announced up front. Bodies are streams that are not
async generators (httpx's own are, and trio reports those as leaked when a connection breaks
mid-request: a daemon that restarts under the simulator's webhooks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import httpx
import trio

from voicecalld.sim.dialect import Delivery
from voicecalld.sim.stats import Tally

__all__ = ["Answer", "Sender"]

_RETRIED = frozenset({408, 429})


@attrs.frozen
class Answer:
    """voicecalld's answer to a delivery (``status`` ``None``: it could not be reached)."""

    delivery: Delivery
    status: int | None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def text(self) -> str:
        return "error" if self.status is None else str(self.status)


class Sender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        tally: Tally,
        *,
        attempts: int = 3,
        first_pause: float = 0.25,
    ) -> None:
        self.client = client
        self.tally = tally
        self.attempts = attempts
        self.first_pause = first_pause

    async def send(
        self, what: str, make: Callable[[int], Delivery], *, slow_body: float = 0.0
    ) -> Answer:
        """Deliver until voicecalld has it (2xx) or refuses it (4xx), or the attempts run out."""
        pause = self.first_pause
        attempt = 1
        while True:
            answer = await self.deliver(what, make(attempt), slow_body=slow_body)
            retry = answer.status is None or answer.status in _RETRIED or answer.status >= 500
            if not retry or attempt >= self.attempts:
                return answer
            await trio.sleep(pause)
            pause *= 2
            attempt += 1

    async def deliver(self, what: str, delivery: Delivery, *, slow_body: float = 0.0) -> Answer:
        """One POST of ``delivery``, counted under ``what``."""
        webhook = delivery.webhook
        url = httpx.URL(webhook.url)
        headers = [
            ("host", url.netloc.decode("ascii")),
            *delivery.headers,
            ("content-length", str(len(delivery.body))),
        ]
        body = _Body(delivery.body, slow_body)
        request = httpx.Request(webhook.method, url, headers=headers, stream=body)
        started = trio.current_time()
        try:
            response = await self.client.send(request)
        except httpx.HTTPError:
            answer = Answer(delivery, None)
        else:
            answer = Answer(delivery, response.status_code, response.content)
            self.tally.latency("webhook", trio.current_time() - started)
        self.tally.webhooks[(what, answer.text)] += 1
        return answer


class _Body(httpx.AsyncByteStream):
    """A request body: at once, or in two halves ``pause`` seconds apart."""

    def __init__(self, body: bytes, pause: float) -> None:
        middle = len(body) // 2 if pause else 0
        self._parts = [part for part in (body[:middle], body[middle:]) if part]
        self._pause = pause

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self._parts:
            raise StopAsyncIteration
        if len(self._parts) == 1 and self._pause:
            await trio.sleep(self._pause)
        return self._parts.pop(0)
