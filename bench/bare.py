"""Bare hypercorn answering a constant: the baseline bench/api and bench/webhook divide by.

What any daemon built on trio + hypercorn pays for an HTTP request and nothing more: hypercorn's
own accept loop and HTTP/1.1 protocol, an ASGI app that reads the whole body (the daemon must
read it too) and sends a fixed reply. The caller passes the daemon's real reply bytes, so both
servers write the same response; no access log and no ``Server`` header, as in the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

__all__ = ["serve_constant"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def constant_app(
    status: int, content_type: str, body: bytes
) -> Callable[[Message, Receive, Send], Awaitable[None]]:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def serve_constant(nursery: trio.Nursery, status: int, content_type: str, body: bytes) -> int:
    """Serve the constant reply on 127.0.0.1 (port 0) in ``nursery``; returns the port."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("bench.bare")
    config.include_server_header = False
    config.graceful_timeout = 0.0
    binds: list[str] = await nursery.start(serve, constant_app(status, content_type, body), config)
    return int(binds[0].rsplit(":", 1)[1])
