"""The REST machinery the carriers share: one request helper over an ``httpx.AsyncClient``.

Invariants, and why:

- **Only ``api_base_url``.** A request names a *path*, joined onto the carrier's configured base
  URL. Absolute URLs, ``//host``, dot segments, queries or fragments in the path and characters
  outside a plain path alphabet are refused before anything is sent, and the joined URL must
  keep the base's scheme, host, port and path prefix: the carrier's credentials go to the
  carrier and nowhere else. Ids are validated by each carrier before they reach a path; this is
  the second lock on the same door.
- **No redirects.** A 3xx is a :class:`CarrierError`, never followed: a redirect could carry the
  credentials to another host.
- **A deadline on every attempt**: the client's per-phase timeouts (the registry's client sets
  them), and an overall deadline around the whole attempt, on trio's clock, whatever the client
  says: a server that trickles bytes cannot hold a call.
- **Retries only when safe.** An *idempotent* request (GET, DELETE, a hang-up by status update,
  a command carrying an idempotency key such as Telnyx ``command_id``) is retried on 5xx, 408,
  429, network errors and timeouts, with exponential backoff and jitter, a bounded number of
  times. A non-idempotent request (placing a call) is retried only when the failure proves the
  request never left (connection refused, connect timeout, no pooled connection); after an
  ambiguous failure (a 5xx, a timeout or a dropped connection once the request was sent) it is
  not, because a second create would place a second call.
- **No credentials in errors or logs.** Messages name the carrier, the method, the path and the
  status, with the carrier's error text cut short and scrubbed of every credential (the token,
  the Basic credential, the bearer key, also percent-encoded). The Authorization header is never
  logged.
- **Bounded answers.** A body larger than :data:`MAX_BODY` is refused.
"""

from __future__ import annotations

import base64
import logging
import random
import re
from collections.abc import AsyncGenerator, Collection, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Final, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import attrs
import httpx
import orjson
import trio

from voicecalld import __version__
from voicecalld.carriers.base import CarrierError

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "MAX_BODY",
    "RestClient",
    "RestResponse",
    "RetryPolicy",
    "basic_authorization",
    "bearer_authorization",
]

log = logging.getLogger("voicecalld.carriers.rest")

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds an attempt may take from start to last byte."""
MAX_BODY: Final = 1024 * 1024
_DETAIL_CHARS: Final = 200
_PATH: Final = re.compile(r"(/[A-Za-z0-9._~:@,=-]+)+/?")
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
_UNSENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures that prove the request never reached the carrier: safe to retry any request."""
_FATAL_TRANSPORT: Final = (httpx.UnsupportedProtocol, httpx.ProxyError)


@attrs.frozen
class RetryPolicy:
    """How often, and how patiently, a retryable request is tried again."""

    attempts: int = 3
    first_delay: float = 0.5
    max_delay: float = 4.0

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures: doubling, capped, with jitter.

        Half of the backoff is kept and the other half drawn at random, so retries from many
        calls spread out without ever hammering the carrier at once.
        """
        backoff = min(self.max_delay, self.first_delay * 2.0 ** (failed_attempts - 1))
        return backoff / 2 + random.uniform(0, backoff / 2)


DEFAULT_RETRY: Final = RetryPolicy()


@attrs.frozen
class RestResponse:
    """A carrier's answer that the caller accepted: a 2xx, or a status it listed in ``expect``."""

    status: int
    data: Any
    """The JSON body, or ``None`` when the body is empty."""

    @property
    def error_code(self) -> str | None:
        """The carrier's own error code: Twilio ``code``, Telnyx ``errors[0].code``."""
        return _error_code(self.data)


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic (Twilio, Plivo)."""
    credential = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {credential}"


def bearer_authorization(token: str) -> str:
    """The ``Authorization`` value of a bearer token (Telnyx)."""
    return f"Bearer {token}"


class _Failure(Exception):
    """One failed attempt: what to report, and whether another attempt may help."""

    def __init__(self, error: CarrierError, *, unsent: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.unsent = unsent


class RestClient:
    """One carrier's REST endpoint: ``api_base_url``, credentials, deadlines and retries."""

    def __init__(
        self,
        carrier: str,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        authorization: str,
        secrets: Iterable[str],
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        parts = urlsplit(base_url)
        # credentials come from the config's own keys, never from userinfo in the base URL
        netloc = parts.netloc.rpartition("@")[2]
        self._base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._origin = httpx.URL(self._base)
        self.carrier = carrier
        self._client = client
        self._headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            "User-Agent": f"voicecalld/{__version__}",
        }
        self._timeout = timeout
        self._retry = retry
        hidden = {*secrets, authorization, authorization.partition(" ")[2]}
        if parts.password:
            hidden.add(parts.password)
        hidden |= {quote(secret, safe="") for secret in hidden}
        # longest first, so a secret containing another is scrubbed whole
        self._secrets = sorted((s for s in hidden if s), key=len, reverse=True)

    async def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        form: Sequence[tuple[str, str]] | None = None,
        json: Mapping[str, object] | None = None,
        expect: Collection[int] = (),
    ) -> RestResponse:
        """Send one request, retried when :class:`RetryPolicy` and idempotency allow.

        Returns the answer for a 2xx or a status in ``expect`` (e.g. 404 where "gone" is an
        answer); raises :class:`CarrierError` for anything else, ``retryable`` for 5xx, 408,
        429, timeouts and network errors.
        """
        url = self._url(method, path)
        headers = dict(self._headers)
        content: bytes | None = None
        if form is not None:
            content = urlencode(list(form)).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json is not None:
            content = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(
                    method,
                    url,
                    path,
                    params=params,
                    content=content,
                    headers=headers,
                    expect=expect,
                )
            except _Failure as failure:
                error = failure.error
                may_retry = error.retryable and (idempotent or failure.unsent)
                if not may_retry or attempt >= self._retry.attempts:
                    raise error from None
                delay = self._retry.delay(attempt)
                log.warning(
                    "carrier request failed; retrying",
                    extra={
                        "provider": self.carrier,
                        "method": method,
                        "path": path,
                        "attempt": attempt,
                        "error": str(error),
                        "retry_in_s": round(delay, 3),
                    },
                )
            await trio.sleep(delay)

    def error(self, method: str, path: str, response: RestResponse) -> CarrierError:
        """The error for an answer the caller let through ``expect`` but cannot accept."""
        where = f"{self.carrier} {method} {path}"
        return _status_error(self._describe(where, response.status, response.data), response.status)

    def _url(self, method: str, path: str) -> str:
        """``api_base_url`` + ``path``, or a non-retryable error if ``path`` could leave it."""
        segments = path.split("/")
        if not _PATH.fullmatch(path) or any(s in (".", "..") for s in segments):
            raise CarrierError(
                f"{self.carrier} {method}: refusing a request path outside api_base_url: "
                f"{self._scrub(path)[:80]!r}",
                retryable=False,
            )
        url = self._base + path
        joined = httpx.URL(url)
        same_origin = (joined.scheme, joined.host, joined.port) == (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        )
        if not same_origin or not joined.path.startswith(self._origin.path.rstrip("/") + "/"):
            raise CarrierError(
                f"{self.carrier} {method}: refusing a request outside api_base_url",
                retryable=False,
            )
        return url

    async def _attempt(
        self,
        method: str,
        url: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: Mapping[str, str],
        expect: Collection[int],
    ) -> RestResponse:
        where = f"{self.carrier} {method} {path}"
        status = 0
        body = bytearray()
        with trio.move_on_after(self._timeout) as deadline:
            try:
                async with self._client.stream(
                    method,
                    url,
                    params=params,
                    content=content,
                    headers=headers,
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    # an async generator: closed at once if the body is refused or cut short
                    chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
                    async with aclosing(chunks):
                        async for chunk in chunks:
                            body += chunk
                            if len(body) > MAX_BODY:
                                raise _Failure(
                                    CarrierError(
                                        f"{where}: answer larger than {MAX_BODY} bytes",
                                        retryable=False,
                                        status=status,
                                    )
                                )
            except _FATAL_TRANSPORT as error:
                raise self._failure(where, error, retryable=False) from None
            except _UNSENT as error:
                raise self._failure(where, error, retryable=True, unsent=True) from None
            except httpx.TransportError as error:  # sent, maybe processed: ambiguous
                raise self._failure(where, error, retryable=True) from None
            except httpx.HTTPError as error:  # an answer httpx cannot decode
                raise self._failure(where, error, retryable=False) from None
        if deadline.cancelled_caught:
            raise _Failure(
                CarrierError(f"{where}: no answer within {self._timeout:g} s", retryable=True)
            )
        data = _json(bytes(body))
        if 200 <= status < 300 or status in expect:
            return RestResponse(status, data)
        raise _Failure(_status_error(self._describe(where, status, data), status))

    def _failure(
        self, where: str, error: Exception, *, retryable: bool, unsent: bool = False
    ) -> _Failure:
        text = self._scrub(f"{where}: {type(error).__name__}: {error}")
        return _Failure(CarrierError(text, retryable=retryable), unsent=unsent)

    def _describe(self, where: str, status: int, data: Any) -> str:
        if 300 <= status < 400:
            return f"{where}: HTTP {status} redirect, not followed"
        if status == 401:
            return f"{where}: HTTP 401: the carrier refused the credentials"
        detail = _error_detail(data)
        text = f"{where}: HTTP {status}" + (f": {detail}" if detail else "")
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _status_error(text: str, status: int) -> CarrierError:
    retryable = status >= 500 or status in _RETRYABLE_STATUSES
    return CarrierError(text, retryable=retryable, status=status)


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _error_code(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    code = data.get("code")
    errors = data.get("errors")
    if code is None and isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
    return None if code is None or isinstance(code, bool) else str(code)


def _error_detail(data: Any) -> str:
    """The carrier's error text: Twilio ``code``/``message``, Plivo ``error``, Telnyx
    ``errors[0]``; cut short, because it is only there to help a human."""
    if not isinstance(data, dict):
        return ""
    parts: list[str] = []
    code = _error_code(data)
    if code is not None:
        parts.append(f"code {code}")
    errors = data.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    if isinstance(first, dict):
        parts.extend(str(first[key]) for key in ("title", "detail") if first.get(key))
    for key in ("message", "error"):
        if data.get(key):
            parts.append(str(data[key]))
    return ": ".join(parts)[:_DETAIL_CHARS]
