"""``/webhooks/{provider}``: carrier callbacks, from the socket to the store and back (SPEC §4).

The order of the checks is the contract:

1. unknown or disabled provider → 404; wrong method → 405 with ``Allow`` (the provider's
   methods);
2. signature headers missing → 401, decided from the headers alone, before any body is read;
3. more than ``server.max_inflight_per_ip`` webhooks in flight from the client → 429;
4. body over ``server.max_body_bytes`` → 413; slower than ``server.body_timeout`` → 408;
5. invalid signature (against ``public_url`` + path + query, never the Host header) → 403;
6. a verified replay → 200 with a harmless body and no side effect;
7. verified but malformed → 400;
8. otherwise the event is applied and **durable in the store** before the 200 with the
   carrier's expected body (TwiML, Plivo XML, or empty for Telnyx).

Bad input never yields a 5xx; each refusal is one access-log line carrying its reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable

from voicecalld.calls.manager import CallManager
from voicecalld.carriers.base import (
    Carrier,
    HttpReply,
    Instructions,
    MalformedWebhook,
    Reply,
    WebhookRequest,
)
from voicecalld.carriers.registry import Carriers
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import Config
from voicecalld.http.app import Route
from voicecalld.http.asgi import BodyTooLarge, BodyTooSlow, Request, Response, json, raw
from voicecalld.metrics import Metrics
from voicecalld.store.base import DuplicateWebhookKey

__all__ = ["routes"]

log = logging.getLogger("voicecalld.webhooks")


class _InFlight:
    """Webhooks being handled, per client address."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def enter(self, client: str, limit: int) -> bool:
        if self.count[client] >= limit:
            return False
        self.count[client] += 1
        return True

    def leave(self, client: str) -> None:
        self.count[client] -= 1
        if self.count[client] <= 0:
            del self.count[client]


def routes(
    manager: CallManager, carriers: Carriers, config: Config, metrics: Metrics
) -> list[Route]:
    urls = PublicUrls(config.server.public_url)
    server = config.server
    in_flight = _InFlight()

    def refuse(
        request: Request,
        provider: str,
        status: int,
        code: str,
        why: str,
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> Response:
        request.note = why
        metrics.webhooks.inc(provider=provider, outcome=code)
        return json(status, {"error": {"code": code, "message": why}}, headers)

    async def webhook(request: Request, params: dict[str, str]) -> Response:
        provider = params["provider"]
        carrier = carriers.get(provider)
        if carrier is None:
            return refuse(
                request, provider, 404, "not_found", f"provider {provider!r} is not enabled"
            )
        if request.method not in carrier.webhook_methods:
            # RFC 9110 §15.5.6: a 405 MUST list the target's methods in Allow
            allowed = ", ".join(sorted(carrier.webhook_methods))
            return refuse(
                request,
                provider,
                405,
                "method_not_allowed",
                f"{request.method} not accepted: use {allowed}",
                headers=[(b"allow", allowed.encode("ascii"))],
            )
        if not carrier.has_signature(request.headers):
            return refuse(request, provider, 401, "unauthenticated", "signature headers missing")
        if not in_flight.enter(request.client, server.max_inflight_per_ip):
            return refuse(
                request, provider, 429, "too_many_requests", "too many webhooks in flight"
            )
        try:
            return await _handle(request, provider, carrier)
        finally:
            in_flight.leave(request.client)

    async def _handle(request: Request, provider: str, carrier: Carrier) -> Response:
        try:
            body = await request.body(server.max_body_bytes, server.body_timeout)
        except BodyTooLarge:
            return refuse(
                request, provider, 413, "too_large", f"body over {server.max_body_bytes} bytes"
            )
        except BodyTooSlow:
            return refuse(
                request, provider, 408, "timeout", f"body slower than {server.body_timeout}s"
            )
        received = WebhookRequest(
            method=request.method,
            url=urls.signed(request.path, request.raw_query),
            headers=request.headers,
            body=body,
            received_at=time.time(),
        )
        try:
            verified = carrier.verify(received)
        except (ValueError, UnicodeError):
            verified = False
        if not verified:
            return refuse(request, provider, 403, "forbidden", "invalid signature")
        key = carrier.replay_key(received)
        if await manager.replayed(key):
            request.note = "replay"
            metrics.webhooks.inc(provider=provider, outcome="replay")
            return _reply(carrier.reply(None, Instructions(Reply.ACK)))
        try:
            event = carrier.parse(received)
        except MalformedWebhook as malformed:
            return refuse(request, provider, 400, "malformed", str(malformed))
        try:
            instructions = await manager.on_event(provider, event, key)
        except DuplicateWebhookKey:  # a replay only the store still remembered
            request.note = "replay"
            metrics.webhooks.inc(provider=provider, outcome="replay")
            return _reply(carrier.reply(None, Instructions(Reply.ACK)))
        metrics.webhooks.inc(provider=provider, outcome="ok")
        request.note = f"{event.kind.value} {instructions.call_id or ''}".strip()
        return _reply(carrier.reply(event, instructions))

    every_method: frozenset[str] = frozenset()  # the carrier decides: 405 with its own Allow
    return [Route("/webhooks/{provider}", every_method, webhook)]


def _reply(reply: HttpReply) -> Response:
    return raw(reply.status, reply.body, [(b"content-type", reply.content_type.encode())])
