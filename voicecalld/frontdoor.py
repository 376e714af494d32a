"""The front door: voicecalld's accept loop, and where each connection goes.

One public port serves webhooks, the control API and carrier media streams. Each accepted
connection is routed by its first bytes, read with ``MSG_PEEK`` so nothing is consumed:
``GET /media/`` goes down the media fast path (our own websocket codec on the raw socket),
``POST /webhooks/`` to the webhook fast path (:mod:`voicecalld.http.fastpath`, which hands the
connection on to hypercorn at its first request that is not a plain webhook), anything else to
hypercorn's per-connection server. Routing is per connection: carriers open a fresh connection
for every media stream, so a stream's upgrade is always a connection's first request. Over TLS
everything but media goes to hypercorn.

Because the accept loop is ours, the connection cap, SIGHUP rebinding (a new accept loop on a new
socket while live connections continue) and draining live in this one place.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from voicecalld.http.fastpath import WEBHOOK_PREFIX, WebhookFastPath
from voicecalld.http.server import HttpServer
from voicecalld.listeners import Listener

__all__ = ["MEDIA_PREFIX", "FrontDoor", "MediaServer"]

log = logging.getLogger("voicecalld.frontdoor")

MEDIA_PREFIX: Final = b"GET /media/"
_PREFIXES: Final = (MEDIA_PREFIX, WEBHOOK_PREFIX)
_PEEK: Final = max(len(prefix) for prefix in _PREFIXES)
MAX_CONNECTIONS: Final = 4096
"""Connections beyond this are closed at once: file descriptors are finite."""

MediaServer = Callable[[trio.socket.SocketType | trio.abc.Stream, str, bytes], Awaitable[None]]
"""Serves one media connection: the raw socket with nothing consumed (the fast path), or a TLS
stream with the bytes already read from it; then the peer's address."""


class FrontDoor:
    def __init__(
        self,
        http: HttpServer,
        media: MediaServer | None,
        *,
        peek_timeout: float,
        tls: ssl.SSLContext | None = None,
        webhooks: WebhookFastPath | None = None,
    ) -> None:
        self.http = http
        self.media = media
        self.webhooks = webhooks
        self.peek_timeout = peek_timeout
        self.tls = tls
        self.connections = 0
        self._nursery: trio.Nursery | None = None
        self._accepting: dict[Listener, trio.CancelScope] = {}
        self._idle = trio.Event()

    def reconfigure(self, peek_timeout: float) -> None:
        """SIGHUP: a new ``server.body_timeout`` for the heads of new requests."""
        self.peek_timeout = peek_timeout
        if self.webhooks is not None:
            self.webhooks.head_timeout = peek_timeout

    def use_tls(self, context: ssl.SSLContext | None) -> None:
        """SIGHUP: new connections handshake with ``context`` (a renewed certificate, or TLS
        turned on or off); live connections keep the one they began with."""
        self.tls = context

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections (they outlive any one listener) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def listen(self, listener: Listener) -> None:
        """Start accepting on ``listener`` (returns once the accept loop runs)."""
        assert self._nursery is not None, "run() first"
        scope = await self._nursery.start(self._accept_loop, listener)
        self._accepting[listener] = scope

    def stop_listening(self, listener: Listener) -> None:
        """Stop accepting on ``listener``; its live connections go on."""
        scope = self._accepting.pop(listener, None)
        if scope is not None:
            scope.cancel()

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight HTTP finish (idle keep-alives close), wait up to
        ``grace`` seconds for connections to end; the caller then cancels the rest."""
        for listener in list(self._accepting):
            self.stop_listening(listener)
        if self.webhooks is not None:
            self.webhooks.close_idle()
        await self.http.close_idle()
        with trio.move_on_after(grace):
            while self.connections:
                self._idle = trio.Event()
                await self._idle.wait()

    async def _accept_loop(
        self, listener: Listener, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        sock = trio.socket.from_stdlib_socket(listener.sock)
        with trio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                try:
                    conn, address = await sock.accept()
                except OSError as failure:  # EMFILE, ECONNABORTED: log, breathe, go on
                    log.warning("accept failed", extra={"error": str(failure)})
                    await trio.sleep(0.05)
                    continue
                if self.connections >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                assert self._nursery is not None
                self.connections += 1
                self._nursery.start_soon(self._serve, conn, _peer(address))

    async def _serve(self, conn: trio.socket.SocketType, peer: str) -> None:
        try:
            if self.tls is not None:
                await self._serve_tls(conn, peer)
                return
            first = await self._first_bytes(conn)
            if self.media is not None and first == MEDIA_PREFIX:
                await self.media(conn, peer, b"")
            elif self.webhooks is not None and first == WEBHOOK_PREFIX:
                await self.webhooks.serve(conn, peer, self.http.serve)
            else:
                await self.http.serve(trio.SocketStream(conn))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:
            # a bug in serving one connection must not take the others down: log it, drop it
            log.exception("connection failed", extra={"client": peer})
        finally:
            conn.close()
            self.connections -= 1
            if not self.connections:
                self._idle.set()

    async def _first_bytes(self, conn: trio.socket.SocketType) -> bytes:
        """Peek at the request line, without consuming it, until it tells a fast path's prefix
        (returned) from the rest (``b""``).

        A client sending one byte at a time gets ``peek_timeout`` in total; a peeked prefix stays
        readable, so partial heads are re-peeked after a short pause rather than busy-looping.
        """
        with trio.move_on_after(self.peek_timeout):
            while True:
                head = await conn.recv(_PEEK, socket.MSG_PEEK)
                if not head:
                    return b""
                for prefix in _PREFIXES:
                    if head.startswith(prefix):
                        return prefix
                if not any(prefix.startswith(head) for prefix in _PREFIXES):
                    return b""
                await trio.sleep(0.005)
        return b""

    async def _serve_tls(self, conn: trio.socket.SocketType, peer: str) -> None:
        """HTTPS/WSS: TLS hides the request line from ``MSG_PEEK``, so the first bytes are read
        from the TLS stream instead, and handed on with it (to hypercorn, replayed)."""
        assert self.tls is not None
        stream = trio.SSLStream(trio.SocketStream(conn), self.tls, server_side=True)
        head = b""
        with trio.move_on_after(self.peek_timeout):
            await stream.do_handshake()
            while len(head) < len(MEDIA_PREFIX) and MEDIA_PREFIX.startswith(head):
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
        if not head:
            return
        if self.media is not None and head.startswith(MEDIA_PREFIX):
            await self.media(stream, peer, head)
        else:
            await self.http.serve(stream, head)


def _peer(address: object) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unknown"
