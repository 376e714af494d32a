"""What passes between a simulated carrier API and its caller: requests, replies, routes.

Each simulated carrier (:mod:`.twilio_api`, :mod:`.plivo_api`, :mod:`.telnyx_api`) is a
:class:`CarrierApi`: its path prefix, its routes (method, path pattern, handler, and the
:class:`~.faults.Endpoint` a request is for), how it checks credentials, and its error shapes. A
handler is a plain function of the simulator's :class:`Registry` (accounts and calls), the
request and the path's parameters, returning a :class:`Reply`; no I/O, so the carriers' rules
read as data in, data out. Malformed input raises ``ValueError``, answered as the carrier's
"bad request".
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import orjson

from voicecalld.carriers.forms import Fields, call_param, parse_form
from voicecalld.sim.faults import Endpoint
from voicecalld.sim.state import SimAccounts, SimCall

__all__ = [
    "CarrierApi",
    "Handler",
    "RecordedRequest",
    "Registry",
    "Reply",
    "Route",
    "basic_credentials_match",
    "find",
    "integer",
    "json_object",
    "our_call_id",
    "text",
]


@attrs.frozen
class RecordedRequest:
    """A request as the simulator received it (``endpoint`` is ``None`` when none matched)."""

    endpoint: Endpoint | None
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def params(self) -> Fields:
        return parse_form(self.query)

    @property
    def form(self) -> Fields:
        return parse_form(self.body)

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@attrs.frozen
class Reply:
    status: int
    data: Any = None
    """The JSON body (``None``: no body)."""
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Registry(Protocol):
    """What handlers read and change: the simulator's accounts and calls."""

    accounts: SimAccounts
    calls: dict[str, SimCall]

    def add(self, call: SimCall) -> None:
        """Keep a call created through the API (and let the simulator start playing it)."""
        ...


Handler = Callable[[Registry, RecordedRequest, Mapping[str, str]], Reply]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str] = attrs.field(converter=_compile)
    handler: Handler
    endpoint: Endpoint | Callable[[Mapping[str, str], Fields], Endpoint | None]
    """The endpoint, or how to tell it from the path's parameters and the query."""

    def endpoint_for(self, params: Mapping[str, str], query: Fields) -> Endpoint | None:
        if isinstance(self.endpoint, Endpoint):
            return self.endpoint
        return self.endpoint(params, query)


class CarrierApi(Protocol):
    """One simulated carrier's REST API."""

    name: str
    prefix: str
    routes: tuple[Route, ...]

    def authorized(self, accounts: SimAccounts, headers: Mapping[str, str]) -> bool: ...

    def owns(self, accounts: SimAccounts, params: Mapping[str, str]) -> bool:
        """Whether the account named in the path (if any) is the authenticated one."""
        ...

    def unauthorized(self) -> Reply: ...

    def not_found(self, path: str) -> Reply: ...

    def bad_request(self, message: str) -> Reply: ...

    def failure(self, status: int) -> Reply:
        """A forced error status (fault injection), in the carrier's error shape."""
        ...


def basic_credentials_match(headers: Mapping[str, str], user: str, password: str) -> bool:
    """Whether ``Authorization`` is HTTP Basic with exactly ``user:password``."""
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    try:
        given = base64.b64decode(credential, validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = f"{user}:{password}".encode()
    return scheme.lower() == "basic" and hmac.compare_digest(given, expected)


def find(registry: Registry, carrier: str, carrier_id: str) -> SimCall | None:
    call = registry.calls.get(carrier_id)
    return call if call is not None and call.carrier == carrier else None


def json_object(request: RecordedRequest) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty); ``ValueError`` for anything else."""
    if not request.body:
        return {}
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body is not a JSON object")
    return data


def our_call_id(url: str | None) -> str | None:
    """voicecalld's call id from a callback URL's ``?call=`` (``None`` if there is none)."""
    if not url:
        return None
    try:
        return call_param(url)
    except ValueError:
        return None


def integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
