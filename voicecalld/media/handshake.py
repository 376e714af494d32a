"""The HTTP/1.1 side of a websocket: the upgrade request and its answers, for both roles.

Pure functions over bytes, no I/O: the front door reads a request head and routes it, the
shell in :mod:`voicecalld.media.connection` sends what these build.

Invariants, and why:

- A head is bounded (:data:`MAX_HEAD_SIZE`, :data:`MAX_HEADERS`) and must end with an empty
  CRLF line; :func:`head_length` finds that end or refuses an oversized head (431) so a
  reader never buffers without limit.
- :func:`parse_request` accepts only what RFC 6455 section 4.2.1 allows (GET, HTTP/1.1, one
  Host, ``Upgrade: websocket``, ``Connection: upgrade``, a 16-byte base64
  ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version: 13``) and refuses everything else with a
  :class:`HandshakeError` that carries the status to answer (400, 405, 426 with
  ``Sec-WebSocket-Version: 13``). Header names are lower-cased, values kept as sent.
- The path and query are returned raw (not percent-decoded): routing compares them to the
  fixed routes of SPEC section 4, and a token in the query is compared byte for byte.
- No extension or subprotocol is ever negotiated: the 101 names neither, so the peer may
  use none (the codec then requires every RSV bit to be zero), and a server that names one
  in its answer to us is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
import os
from collections.abc import Sequence

import attrs
import orjson

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "HandshakeError",
    "UpgradeRequest",
    "accept_key",
    "accept_response",
    "check_response",
    "client_request",
    "error_response",
    "head_length",
    "new_key",
    "parse_request",
]

MAX_HEAD_SIZE = 8192
"""Bytes a request or response head may take, blank line included (nginx's default)."""
MAX_HEADERS = 64

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_BAD_VALUE_CHARS = frozenset(range(0x20)) - {0x09} | {0x7F}

Headers = tuple[tuple[str, str], ...]


class HandshakeError(Exception):
    """A websocket handshake that cannot go on.

    ``status`` is the HTTP status: on the server side the one to answer with (see
    :func:`error_response`), on the client side the one the server answered (0 when its
    answer was not even HTTP). ``headers`` are extra response headers the answer needs.
    """

    def __init__(self, status: int, message: str, headers: Headers = ()) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.headers = headers


@attrs.frozen
class UpgradeRequest:
    """A valid websocket upgrade request, as :func:`parse_request` read it."""

    target: str
    """The request target as sent: ``path`` and, after a ``?``, ``query``."""
    path: str
    query: str
    headers: Headers
    """Every header in order, names lower-cased."""
    key: str
    """The client's ``Sec-WebSocket-Key``, needed for the 101 answer."""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case); repeated headers joined with ", "."""
        return _header(self.headers, name.lower())


def head_length(buffer: bytes | bytearray, limit: int = MAX_HEAD_SIZE) -> int | None:
    """Length of the head at the start of ``buffer`` (through its blank line), or ``None``
    if it has not all arrived; raises 431 when no head can end within ``limit`` bytes."""
    end = buffer.find(b"\r\n\r\n", 0, limit)
    if end >= 0:
        return end + 4
    if len(buffer) >= limit:
        raise HandshakeError(431, "head too large")
    return None


def parse_request(head: bytes) -> UpgradeRequest:
    """Read and check an upgrade request head (as :func:`head_length` delimited it)."""
    request_line, headers = _parse_head(head)
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise HandshakeError(400, "websocket needs HTTP/1.1")
    if not target.startswith("/"):
        raise HandshakeError(400, "request target must be a path")
    if method != "GET":
        raise HandshakeError(405, "websocket upgrades use GET", (("Allow", "GET"),))
    if _count(headers, "host") != 1:
        raise HandshakeError(400, "exactly one Host header is required")
    if not _has_token(headers, "upgrade", "websocket"):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if not _has_token(headers, "connection", "upgrade"):
        raise HandshakeError(400, "missing Connection: upgrade")
    if _header(headers, "sec-websocket-version") != "13":
        raise HandshakeError(
            426, "unsupported websocket version", (("Sec-WebSocket-Version", "13"),)
        )
    key = _header(headers, "sec-websocket-key")
    if _count(headers, "sec-websocket-key") != 1 or key is None or not _valid_key(key):
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    path, _, query = target.partition("?")
    return UpgradeRequest(target=target, path=path, query=query, headers=headers, key=key)


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value that proves the server read ``key``."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def accept_response(request: UpgradeRequest) -> bytes:
    """The 101 answer that opens the websocket."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.key)}\r\n\r\n"
    ).encode("ascii")


def error_response(status: int, message: str = "", headers: Headers = ()) -> bytes:
    """An HTTP answer refusing the upgrade, in the error shape of every other route (SPEC §5:
    ``{"error": {"code", "message"}}``; the code is the status's phrase, ``not_found``)."""
    phrase = http.HTTPStatus(status).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    body = orjson.dumps({"error": {"code": code, "message": message or phrase}})
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def new_key() -> str:
    """A fresh random ``Sec-WebSocket-Key`` for a client handshake."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def client_request(
    host: str, target: str, key: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The client's upgrade request for ``target`` on ``host`` (the Host header value)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"line break in a request header: {line!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_response(head: bytes, key: str) -> Headers:
    """Check the server's answer to our request with ``key``; return its headers.

    Raises :class:`HandshakeError` with the server's status when it refused, and with 101
    when it said yes but got the handshake wrong.
    """
    try:
        status_line, headers = _parse_head(head)
    except HandshakeError as exc:
        raise HandshakeError(0, f"unreadable answer: {exc.message}") from None
    parts = status_line.split(" ", 2)
    if (
        len(parts) < 2
        or parts[0] != "HTTP/1.1"
        or not (parts[1].isascii() and parts[1].isdigit())
        or len(parts[1]) != 3
    ):
        raise HandshakeError(0, "unreadable status line")
    status = int(parts[1])
    if status != 101:
        raise HandshakeError(status, "server refused the upgrade")
    if not _has_token(headers, "upgrade", "websocket"):
        raise HandshakeError(101, "missing Upgrade: websocket")
    if not _has_token(headers, "connection", "upgrade"):
        raise HandshakeError(101, "missing Connection: upgrade")
    if _header(headers, "sec-websocket-accept") != accept_key(key):
        raise HandshakeError(101, "wrong Sec-WebSocket-Accept")
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if _header(headers, name) is not None:
            raise HandshakeError(101, f"server chose {name} we did not offer")
    return headers


def _parse_head(head: bytes) -> tuple[str, Headers]:
    """Split a head into its first line and its (lower-cased name, value) headers."""
    if len(head) > MAX_HEAD_SIZE:
        raise HandshakeError(431, "head too large")
    if not head.endswith(b"\r\n\r\n"):
        raise HandshakeError(400, "head does not end with an empty line")
    lines = head[:-4].split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise HandshakeError(431, "too many headers")
    first = lines[0]
    if not first.isascii() or any(byte < 0x20 or byte == 0x7F for byte in first):
        raise HandshakeError(400, "malformed first line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            raise HandshakeError(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE_CHARS.intersection(value):
            raise HandshakeError(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return first.decode("ascii"), tuple(headers)


def _header(headers: Headers, name: str) -> str | None:
    values = [value for key, value in headers if key == name]
    return ", ".join(values) if values else None


def _count(headers: Headers, name: str) -> int:
    return sum(1 for key, _ in headers if key == name)


def _has_token(headers: Headers, name: str, token: str) -> bool:
    """Whether the comma-separated list header ``name`` holds ``token`` (any case)."""
    value = _header(headers, name)
    return value is not None and token in (item.strip().lower() for item in value.split(","))


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False
