"""A request and a few responses over raw ASGI: just enough for voicecalld's routes.

No framework: the routes are few, and the webhook route needs control a framework hides (the
headers are judged before the body is read; the body is read under a size cap and a deadline).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qs

import orjson
import trio

__all__ = [
    "BodyTooLarge",
    "BodyTooSlow",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "client_address",
    "error",
    "json",
    "text",
]

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Response = Callable[[Send], Awaitable[int]]
"""A response sends itself and returns its status (for the access log and metrics)."""


class BodyTooLarge(Exception):
    """The body exceeded the cap: 413."""


class BodyTooSlow(Exception):
    """The body did not arrive in time: 408."""


class Request:
    def __init__(self, scope: Scope, receive: Receive, client: str) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.raw_query: str = scope.get("query_string", b"").decode("latin-1")
        self.client = client
        """The client's address: the peer, or the rightmost untrusted X-Forwarded-For entry."""
        self.headers = _headers(scope["headers"])
        self.note: str | None = None
        """Why the request was refused (or what it did): added to its access-log line."""

    def query(self, name: str) -> str | None:
        values = parse_qs(self.raw_query).get(name)
        return values[-1] if values else None

    async def body(self, limit: int, timeout: float) -> bytes:
        """Read the whole body; :class:`BodyTooLarge` past ``limit``, :class:`BodyTooSlow` after
        ``timeout`` seconds."""
        declared = self.headers.get("content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > limit
        ):
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(timeout) as scope:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if scope.cancelled_caught:
            raise BodyTooSlow
        return b"".join(chunks)

    async def disconnected(self) -> None:
        """Return when the client goes away (for long-lived responses such as event streams)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def json_body(self, limit: int, timeout: float) -> Any:
        """The body as JSON; ``ValueError`` if it is not."""
        raw = await self.body(limit, timeout)
        if not raw:
            return {}
        return orjson.loads(raw)


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


def client_address(
    scope: Scope, trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The address per-IP limits apply to (SPEC §4).

    The peer, unless the peer is a trusted proxy: then the rightmost X-Forwarded-For entry that is
    not itself a trusted proxy (entries to its left are whatever the client claimed).
    """
    peer = scope.get("client")
    address = str(peer[0]) if peer else "unknown"
    networks = list(trusted)
    if not networks or not _trusted(address, networks):
        return address
    forwarded = [
        part.strip()
        for name, value in scope["headers"]
        if name.lower() == b"x-forwarded-for"
        for part in value.decode("latin-1").split(",")
    ]
    for hop in reversed(forwarded):
        if not _trusted(hop, networks):
            return str(hop)
    return address


def _trusted(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


_JSON: Final = [(b"content-type", b"application/json")]


def json(status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
    return raw(status, orjson.dumps(body), [*_JSON, *headers])


def error(status: int, code: str, message: str) -> Response:
    """The error shape of SPEC §5: ``{"error": {"code", "message"}}``."""
    return json(status, {"error": {"code": code, "message": message}})


def text(
    status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    return raw(status, data, [(b"content-type", content_type.encode())])


def raw(status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Response:
    async def respond(send: Send) -> int:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return status

    return respond
