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

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until the client or :meth:`close_idle` ends it."""
        state = ConnectionState(self._state.copy())
        # hypercorn annotates SSLStream but duck-types: a plain SocketStream is its other case
        server = TCPServer(self._app, self._config, self._context, state, stream)  # type: ignore[arg-type]
        await server.run()

    async def close_idle(self) -> None:
        """Close keep-alive connections as they become idle; requests in flight still finish."""
        await self._context.terminated.set()
