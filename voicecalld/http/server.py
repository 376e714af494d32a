"""Hypercorn, one connection at a time: the only module that touches hypercorn's internals.

voicecalld owns the accept loop (:mod:`voicecalld.frontdoor`) and hands every non-media
connection to hypercorn's per-connection ``TCPServer``, the same class hypercorn's own
``worker_serve`` uses. That API is internal to hypercorn, so pyproject pins the tested range and
this glue stays in one small file. The ASGI lifespan is not run: the runtime does its own start-up.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState

__all__ = ["HttpServer"]


class HttpServer:
    """Serves accepted connections with hypercorn; :meth:`close_idle` starts a graceful stop."""

    def __init__(self, app: Any, *, keep_alive_timeout: float = 5.0) -> None:
        config = HypercornConfig()
        config.keep_alive_timeout = keep_alive_timeout
        config.accesslog = None  # voicecalld logs each request itself, structured
        config.errorlog = logging.getLogger("voicecalld.http")
        config.include_server_header = False
        config.h11_max_incomplete_size = 16 * 1024
        config.graceful_timeout = 5.0
        self._config = config
        self._app = ASGIWrapper(cast(ASGIFramework, app))
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}

    async def serve(self, stream: trio.abc.Stream, received: bytes = b"") -> None:
        """Serve one connection until the client or :meth:`close_idle` ends it; ``received``
        is what the front door or the webhook fast path already read of it (read again first)."""
        if received:
            stream = _replayed(stream, received)
        state = ConnectionState(self._state.copy())
        # hypercorn annotates SSLStream but duck-types: a plain SocketStream is its other case
        server = TCPServer(self._app, self._config, self._context, state, stream)  # type: ignore[arg-type]
        await server.run()

    async def close_idle(self) -> None:
        """Close keep-alive connections as they become idle; requests in flight still finish."""
        await self._context.terminated.set()


def _replayed(stream: trio.abc.Stream, received: bytes) -> trio.abc.Stream:
    """``stream`` with ``received`` read from it again first. Hypercorn duck-types its stream
    (a TLS one has ``do_handshake``, a plain one a ``socket``): each wrapper has the members
    hypercorn uses for its kind."""
    if isinstance(stream, trio.SSLStream):
        return _ReplayedTLS(stream, received)
    assert isinstance(stream, trio.SocketStream)
    return _ReplayedSocket(stream, received)


class _Replayed(trio.abc.Stream):
    def __init__(self, stream: trio.abc.Stream, received: bytes) -> None:
        self._stream = stream
        self._received = received

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._received:
            received, self._received = self._received, b""
            return received
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _ReplayedSocket(_Replayed):
    def __init__(self, stream: trio.SocketStream, received: bytes) -> None:
        super().__init__(stream, received)
        self._socket_stream = stream
        self.socket = stream.socket

    async def send_eof(self) -> None:
        await self._socket_stream.send_eof()


class _ReplayedTLS(_Replayed):
    def __init__(self, stream: trio.SSLStream[trio.SocketStream], received: bytes) -> None:
        super().__init__(stream, received)
        self._tls = stream
        self.transport_stream = stream.transport_stream

    async def do_handshake(self) -> None:
        await self._tls.do_handshake()  # done already: returns at once

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol
