"""The ASGI application: the route table of SPEC §4, access logging and request metrics.

Each area contributes its own routes (:mod:`.health`, :mod:`.webhooks`, :mod:`.api`,
:mod:`.events`); this module only matches, times, logs and counts. Routes are matched by pattern so
metrics are labelled ``/v1/calls/{id}``, never by raw path (bounded cardinality). Unknown routes
answer a JSON 404, known routes with the wrong method a JSON 405 with ``Allow``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import attrs

from voicecalld.http.asgi import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    client_address,
    error,
    json,
)
from voicecalld.metrics import Metrics

__all__ = ["App", "Route"]

log = logging.getLogger("voicecalld.http")

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@attrs.frozen
class Route:
    pattern: str
    """A path with ``{name}`` segments, e.g. ``/v1/calls/{id}/hangup``."""
    methods: frozenset[str]
    """The methods the route takes; empty: every method reaches the handler, which answers a
    405 itself (the webhook route: which methods are right depends on the carrier)."""
    handler: Handler
    regex: re.Pattern[str] = attrs.field(init=False)

    @regex.default
    def _compile(self) -> re.Pattern[str]:
        return re.compile(
            "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.pattern)) + "$"
        )


class App:
    """Dispatches HTTP requests to routes. Websocket requests are refused here: carrier media
    streams never reach hypercorn (the front door sends them down the fast path)."""

    def __init__(
        self,
        routes: Sequence[Route],
        metrics: Metrics,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.routes = list(routes)
        self.metrics = metrics
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def reconfigure(self, routes: Sequence[Route], trusted_proxies: Iterable[str]) -> None:
        """SIGHUP: new routes (new tokens, carriers, limits) for requests from now on."""
        self.routes = list(routes)
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            # a media upgrade on a reused keep-alive connection: refuse (SPEC: fresh connections)
            await send({"type": "websocket.close", "code": 1008, "reason": "open a new connection"})
        elif kind == "lifespan":  # not run by our glue, but answer politely if it ever is
            message = await receive()
            await send({"type": message["type"] + ".complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive, client_address(scope, self.trusted))
        label, respond = self._match(request)
        try:
            response = await respond
        except Exception:
            # a bug, not bad input: log it fully, answer 500, keep serving
            log.exception("request failed", extra={"route": label, "method": request.method})
            response = error(500, "internal", "internal error")
        status = await response(send)
        self.metrics.http_requests.inc(route=label, status=str(status))
        # successes at debug: at hundreds of webhooks a second an info line each costs more
        # than verifying them; refusals and errors stay at info with their reason
        level = logging.DEBUG if status < 400 else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": label,
                    "status": status,
                    "client": request.client,
                    "note": request.note,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    def _match(self, request: Request) -> tuple[str, Awaitable[Response]]:
        allowed: set[str] = set()
        for route in self.routes:
            found = route.regex.match(request.path)
            if found is None:
                continue
            if (
                not route.methods
                or request.method in route.methods
                or (request.method == "HEAD" and "GET" in route.methods)
            ):
                return route.pattern, route.handler(request, found.groupdict())
            allowed |= route.methods
        if allowed:
            return "<405>", _method_not_allowed(allowed)
        return "<404>", _not_found(request.path)


async def _method_not_allowed(allowed: set[str]) -> Response:
    return json(
        405,
        {"error": {"code": "method_not_allowed", "message": f"use {', '.join(sorted(allowed))}"}},
        [(b"allow", ", ".join(sorted(allowed)).encode())],
    )


async def _not_found(path: str) -> Response:
    return error(404, "not_found", f"no route for {path}")
