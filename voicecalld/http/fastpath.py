"""The webhook fast path: carriers' callbacks served by a lean HTTP/1.1 loop of our own.

A carrier's callback is a small ``POST /webhooks/...`` with a ``Content-Length`` body, and its
answer a few hundred bytes. Through hypercorn each one paid for a general server's machinery
(a task group per connection, a task per request, an event queue between them), which cost
more than verifying and recording the callback: ``bench/webhook`` measured 0.5 of bare
hypercorn through it, and above bare hypercorn through this loop. The front door
(:mod:`voicecalld.frontdoor`) sends here every plain-TCP connection whose first bytes are
``POST /webhooks/``; everything else, and TLS, stays with hypercorn.

Invariants, and why:

- **Only the plain case is ours.** A request is served here only if its head parses strictly
  (:func:`parse_head`): ``POST`` to ``/webhooks/``, ``HTTP/1.1``, exactly one ``Host`` and
  one ``Content-Length``, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, visible ASCII in
  the target, header names that are tokens, no folded lines, the head within 16 KiB. Anything
  else, on any request of the connection, hands the whole connection, from that request on
  (the bytes already read are replayed), to hypercorn, which answers it as it answers
  everything else (a 400 for a malformed head, say). So this loop never has to be a complete
  or lenient HTTP parser, and there is no request on which it and hypercorn could disagree
  about where a request ends.
- **The same application.** Each request goes through the daemon's ASGI app
  (:class:`voicecalld.http.app.App`), so routing, the webhook checks and their status codes,
  ``/metrics`` and the access log are the same whichever server carried it.
- **Keep-alive only when the request was read whole.** A request refused before its body was
  read (401, 413, 429, 408...) is answered with ``Connection: close``: the unread body would
  otherwise be taken for the next request. ``Connection: close`` from the client is honoured.
- **Timeouts as hypercorn's.** An idle keep-alive connection is closed after
  ``keep_alive_timeout``; a request head must arrive whole within ``head_timeout`` of its first
  byte (the first request's, of the front door's peek at its first bytes, which has the same
  timeout of its own); the body's own timeout (408) is the webhook route's, as before.
- **A client that goes away** mid-request is a disconnect to the app, as with hypercorn, never
  a failure of ours (no 5xx, no error log).
- **Draining**: :meth:`WebhookFastPath.close_idle` closes connections waiting for a request at
  once and the others after the response in flight, like hypercorn's graceful close.
"""

from __future__ import annotations

import email.utils
import http
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, final
from urllib.parse import unquote

import attrs
import trio

from voicecalld.http.asgi import Receive, Scope, Send

__all__ = ["MAX_HEAD", "WEBHOOK_PREFIX", "Head", "WebhookFastPath", "parse_head", "response_head"]

WEBHOOK_PREFIX: Final = b"POST /webhooks/"
MAX_HEAD: Final = 16 * 1024
"""Largest request head served here (hypercorn's ``h11_max_incomplete_size`` in the daemon)."""

_RECV: Final = 65536
_HEAD = re.compile(
    rb"POST (/webhooks/[\x21-\x7e]*) HTTP/1\.1\r\n"  # visible ASCII in the target
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)"  # token: value
    rb"\r\n"
)
"""The shape of every head served here, checked by one match: no folded line, no bare CR or
LF, no control byte, nothing before a header's colon but a token."""
_LENIENT_END = re.compile(rb"\n\r?\n")
"""The end of a head as h11 (so hypercorn) reads it too: lines may end in a bare LF. Such a
head is not served here (no match of :data:`_HEAD`) but handed to hypercorn, which answers."""
_HANDED_OFF: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_REASONS: Final = {status.value: status.phrase.encode() for status in http.HTTPStatus}

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handoff = Callable[[trio.abc.Stream, bytes], Awaitable[None]]
"""Serves the rest of a connection with hypercorn, given what was read of it already
(:meth:`voicecalld.http.server.HttpServer.serve`)."""


@attrs.frozen
class Head:
    """A request head this loop serves (see :func:`parse_head`)."""

    target: bytes
    headers: list[tuple[bytes, bytes]]
    """Names lower-cased, values stripped, in the order received."""
    content_length: int
    close: bool
    """The client asked to close the connection after this request."""


def parse_head(head: bytes) -> Head | None:
    """The request head ``head`` (up to and including its blank line), or ``None`` when it is
    not one this loop serves (the connection then goes to hypercorn).

    >>> parse_head(b"POST /webhooks/plivo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 3\\r\\n\\r\\n")
    ... # doctest: +NORMALIZE_WHITESPACE
    Head(target=b'/webhooks/plivo', headers=[(b'host', b'x'), (b'content-length', b'3')],
         content_length=3, close=False)
    >>> parse_head(b"POST /webhooks/plivo HTTP/1.0\\r\\nHost: x\\r\\nContent-Length: 3\\r\\n\\r\\n")
    """
    matched = _HEAD.fullmatch(head) if len(head) <= MAX_HEAD else None
    if matched is None:
        return None
    target, block = matched.groups()
    headers: list[tuple[bytes, bytes]] = []
    lengths: list[bytes] = []
    hosts = 0
    close = False
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name, value = name.lower(), value.strip(b" \t")
        if name in _HANDED_OFF:
            return None
        if name == b"content-length":
            lengths.append(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        headers.append((name, value))
    if hosts != 1 or len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 12:
        return None
    return Head(target, headers, int(lengths[0]), close)


def response_head(status: int, headers: list[tuple[bytes, bytes]], date: bytes) -> bytes:
    """The status line and headers of a response (with ``Date``), up to its blank line."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"")), b"date: " + date]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


@final
class WebhookFastPath:
    """Serves the connections the front door routes here (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, keep_alive_timeout: float, head_timeout: float) -> None:
        self._app = app
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self._waiting: set[trio.CancelScope] = set()
        """Around each connection's wait for its next request: cancelled by :meth:`close_idle`."""
        self._closing = False
        self._date = (0, b"")

    def close_idle(self) -> None:
        """Graceful stop: close idle connections now, busy ones after their response."""
        self._closing = True
        for scope in self._waiting:
            scope.cancel()

    async def serve(self, conn: trio.socket.SocketType, peer: str, handoff: Handoff) -> None:
        """Serve ``conn`` until the client or a graceful stop closes it, or hand it to
        hypercorn. The caller closes ``conn``."""
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # as trio.SocketStream does for hypercorn: a response must not wait for Nagle
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = (peer, 0)
        buffered = b""
        while not self._closing:
            buffered = await self._next_head(conn, buffered)
            end = buffered.find(b"\r\n\r\n")
            if end < 0:
                if len(buffered) > MAX_HEAD or _LENIENT_END.search(buffered):
                    await handoff(trio.SocketStream(conn), buffered)  # 431, 400, or served
                return  # closed, or too slow
            head = parse_head(buffered[: end + 4])
            if head is None:
                await handoff(trio.SocketStream(conn), buffered)
                return
            request = _Request(conn, buffered[end + 4 :], head.content_length)
            path, _, query = head.target.partition(b"?")
            scope: Scope = {
                "type": "http",
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": unquote(path.decode("ascii")),
                "raw_path": path,
                "query_string": query,
                "headers": head.headers,
                "client": client,
            }
            await self._app(scope, request.receive, request.send)
            if request.response is None:
                return  # the app sent nothing (it always answers; a bug otherwise): close
            close = head.close or not request.whole or self._closing
            await _send_all(conn, self._response(request, close))
            if close:
                return
            buffered = request.rest

    async def _next_head(self, conn: trio.socket.SocketType, buffered: bytes) -> bytes:
        """``buffered`` and what follows until the end of a head, ``MAX_HEAD`` or the end of
        the connection (then returned as they are); ``b""`` if no request came in time."""
        if b"\r\n\r\n" in buffered:
            return buffered  # pipelined: the next request is here already
        if not buffered:
            with trio.CancelScope(deadline=trio.current_time() + self.keep_alive_timeout) as idle:
                self._waiting.add(idle)
                try:
                    await trio.lowlevel.wait_readable(conn)
                finally:
                    self._waiting.discard(idle)
            if idle.cancelled_caught:
                return b""
            buffered = await conn.recv(_RECV)  # readable: at once, and usually the whole head
            if not buffered or b"\r\n\r\n" in buffered:
                return buffered
        with trio.move_on_after(self.head_timeout):
            while not _LENIENT_END.search(buffered) and len(buffered) <= MAX_HEAD:
                data = await conn.recv(_RECV)
                if not data:
                    return buffered
                buffered += data
            return buffered
        return b""

    def _response(self, request: _Request, close: bool) -> bytes:
        assert request.response is not None
        status, headers = request.response
        if close:
            headers = [*headers, (b"connection", b"close")]
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return response_head(status, headers, self._date[1]) + b"".join(request.body)


class _Request:
    """One request's ASGI ``receive`` and ``send``: the body read from the socket when the app
    asks for it, the response collected whole (webhook answers are small)."""

    def __init__(self, conn: trio.socket.SocketType, buffered: bytes, length: int) -> None:
        self._conn = conn
        self._pending = bytearray(buffered)
        self._length = length
        self.whole = length == 0
        """Whether the body was read whole (the connection can then serve another request)."""
        self.rest = buffered if self.whole else b""
        """What followed the body (a pipelined request), once it is read."""
        self._received = False
        self.response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.body: list[bytes] = []

    async def receive(self) -> dict[str, Any]:
        if self._received:
            return {"type": "http.disconnect"}
        while len(self._pending) < self._length:
            try:
                data = await self._conn.recv(_RECV)
            except OSError:  # reset by the client: gone, as for hypercorn, not our failure
                data = b""
            if not data:
                return {"type": "http.disconnect"}
            self._pending += data
        body, self.rest = bytes(self._pending[: self._length]), bytes(self._pending[self._length :])
        self.whole = self._received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.response = (message["status"], list(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            self.body.append(message.get("body", b""))


async def _send_all(conn: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await conn.send(view)
        view = view[sent:]
