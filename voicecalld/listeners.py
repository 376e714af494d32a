"""The listening sockets: made and closed by voicecalld itself, never by hypercorn.

Owning them is what lets a failed start-up release the port before any retry (hypercorn's own
binder could leave a first socket bound when a later one failed), lets SIGHUP rebind cleanly, and
makes socket activation just another source of the same socket: an inherited ``LISTEN_FDS`` socket
is duplicated per start attempt, so closing our copy never loses systemd's.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping

import attrs
import httpx

from voicecalld import systemd

__all__ = [
    "Listener",
    "PortHeldByVoicecalld",
    "PortInUse",
    "open_listeners",
    "served_by_voicecalld",
]

log = logging.getLogger("voicecalld.listeners")

BACKLOG = 1024


PROBE_TIMEOUT = 1.0
"""Seconds to wait for whatever holds our port to say, on ``/healthz``, whether it is voicecalld."""


class PortInUse(OSError):
    """The address is taken by something that is not a serving voicecalld (maybe one restarting):
    retried with backoff."""


class PortHeldByVoicecalld(Exception):
    """Another voicecalld serves on our address: not retried, as for a locked state dir."""


@attrs.frozen
class Listener:
    sock: socket.socket
    activated: bool
    """True for a socket inherited from systemd (LISTEN_FDS)."""

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; for a unix socket inherited from systemd, ``(path, 0)``."""
        name = self.sock.getsockname()
        if isinstance(name, str | bytes):
            return (name.decode() if isinstance(name, bytes) else name), 0
        return str(name[0]), int(name[1])


def open_listeners(
    bind: str, port: int, environ: Mapping[str, str] | None = None
) -> list[Listener]:
    """Sockets to serve on: systemd's (duplicated) when it passed any, else a new bound one.

    The caller closes them. ``bind``/``port`` are ignored under socket activation.
    """
    inherited = systemd.listen_fds(os.environ if environ is None else environ)
    if inherited:
        return [Listener(sock, activated=True) for sock in inherited]
    return [Listener(bind_tcp(bind, port), activated=False)]


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, not sharing
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(error.errno, f"{host}:{port} is already in use") from None
        raise
    return sock


async def served_by_voicecalld(host: str, port: int) -> bool:
    """Whether a voicecalld answers ``/healthz`` on ``host:port``, over HTTP or HTTPS.

    Asked only once binding failed, to tell a second daemon on one port (refused at once, SPEC
    §3) from a port that may come free (a first daemon restarting, some other program).
    """
    if host in ("", "0.0.0.0"):  # noqa: S104 (the wildcard we bound: ask loopback instead)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # unverified: nothing is sent but a GET, and the answer only names the service
    async with httpx.AsyncClient(
        verify=False,  # noqa: S501
        trust_env=False,
        timeout=PROBE_TIMEOUT,
    ) as client:
        for scheme in ("http", "https"):
            try:  # httpx's own timeouts, not a cancel scope: they close the socket they time out
                answer = await client.get(f"{scheme}://{netloc}/healthz")
                if answer.json().get("service") == "voicecalld":
                    return True
            except (httpx.HTTPError, ValueError, AttributeError):
                pass  # not HTTP(S), not JSON, not an object: not voicecalld
    return False
