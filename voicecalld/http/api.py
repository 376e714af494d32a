"""The control API, ``/v1/calls`` (SPEC §5): JSON in and out, bearer token, errors by field.

Every request needs ``Authorization: Bearer <token>`` (compared in constant time). Bodies are
checked strictly: an unknown field, a wrong type or a bad number is a 400 whose message names the
field. Errors always have the shape ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from voicecalld.calls.manager import (
    CallEnded,
    CallManager,
    CallNotAnswered,
    CallNotFound,
    CapacityReached,
    DialFailed,
    UnknownProvider,
)
from voicecalld.calls.model import Mode
from voicecalld.carriers.base import CarrierError
from voicecalld.config import Config
from voicecalld.http.app import Route
from voicecalld.http.asgi import BodyTooLarge, BodyTooSlow, Request, Response, error, json
from voicecalld.http.health import Readiness

__all__ = ["BadRequest", "authorized", "routes"]

_E164: Final = re.compile(r"\+[0-9]{2,15}")
_DIGITS: Final = re.compile(r"[0-9*#wW]{1,32}")
MAX_TEXT: Final = 4000
MAX_PAGE: Final = 500


class BadRequest(Exception):
    """A 400 naming the field (``field: problem``)."""


def authorized(request: Request, token: str) -> bool:
    """Whether the request bears ``token``; never for an empty token, whatever is sent."""
    given = request.headers.get("authorization", "")
    scheme, _, credential = given.partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(credential.strip().encode(), token.encode())
    )


Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


def routes(manager: CallManager, readiness: Readiness, token: str, config: Config) -> list[Route]:
    server = config.server

    def guarded(handler: Handler) -> Handler:
        """Authentication, and the mapping of manager errors to status codes, in one place."""

        async def guarded_handler(request: Request, params: dict[str, str]) -> Response:
            if not authorized(request, token):
                request.note = "bad or missing token"
                return error(401, "unauthorized", "a valid bearer token is required")
            try:
                return await handler(request, params)
            except BadRequest as bad:
                request.note = str(bad)
                return error(400, "bad_request", str(bad))
            except BodyTooLarge:
                return error(413, "too_large", f"body over {server.max_body_bytes} bytes")
            except BodyTooSlow:
                return error(408, "timeout", f"body slower than {server.body_timeout}s")
            except CallNotFound as missing:
                return error(404, "not_found", f"no call {missing}")
            except CallEnded as ended:
                return error(409, "call_ended", f"call {ended} has ended")
            except CallNotAnswered as ringing:
                return error(409, "not_answered", f"call {ringing} is not answered yet")
            except CapacityReached as full:
                return error(429, "capacity", str(full))
            except UnknownProvider as unknown:
                return error(400, "bad_request", f"provider: {unknown} is not enabled")
            except DialFailed as failed:
                request.note = str(failed)
                return error(502, "carrier_failed", f"the carrier did not place the call: {failed}")
            except CarrierError as failed:
                request.note = str(failed)
                return error(502, "carrier_failed", f"the carrier failed: {failed}")

        return guarded_handler

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json_body(server.max_body_bytes, server.body_timeout)
        except orjson.JSONDecodeError:
            raise BadRequest("body: not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("body: expected a JSON object")
        return data

    async def create(request: Request, _params: dict[str, str]) -> Response:
        if not readiness.ready:
            return error(503, "not_ready", f"voicecalld is {readiness.phase.value}")
        data = await body(request)
        _only(data, {"to", "from", "provider", "mode", "message", "bridge_url"})
        to = _e164(data, "to", required=True)
        from_number = _e164(data, "from", required=False)
        provider = _string(data, "provider", 32)
        message = _string(data, "message", MAX_TEXT)
        # no mode: a message means it is to be spoken (notify), none a conversation
        mode_text = _string(data, "mode", 32) or (Mode.NOTIFY if message else Mode.CONVERSATION)
        try:
            mode = Mode(mode_text)
        except ValueError:
            raise BadRequest("mode: expected notify or conversation") from None
        if mode is Mode.NOTIFY and not message:
            raise BadRequest("message: required in notify mode")
        if mode is Mode.CONVERSATION and message:
            # never silently dropped: a conversation speaks through its bridge or /speak
            raise BadRequest("message: only spoken in notify mode (conversations use /speak)")
        bridge_url = _string(data, "bridge_url", 2048)
        if bridge_url and urlsplit(bridge_url).scheme not in ("ws", "wss"):
            raise BadRequest("bridge_url: expected a ws:// or wss:// URL")
        call = await manager.place(
            to,
            from_number=from_number,
            provider=provider or None,
            mode=mode,
            message=message,
            bridge_url=bridge_url,
        )
        return json(201, call.to_json())

    async def listing(request: Request, _params: dict[str, str]) -> Response:
        state = request.query("state")
        if state not in (None, "active", "ended"):
            raise BadRequest("state: expected active or ended")
        limit_text = request.query("limit") or "50"
        if (
            not (limit_text.isascii() and limit_text.isdigit())
            or not 1 <= int(limit_text) <= MAX_PAGE
        ):
            raise BadRequest(f"limit: expected an integer in 1..{MAX_PAGE}")
        active = None if state is None else state == "active"
        try:
            calls, cursor = await manager.store.list_calls(
                active=active, limit=int(limit_text), cursor=request.query("cursor")
            )
        except ValueError:
            raise BadRequest("cursor: not a cursor this server gave") from None
        return json(200, {"calls": [call.to_json() for call in calls], "next_cursor": cursor})

    async def one(_request: Request, params: dict[str, str]) -> Response:
        return json(200, (await manager.get(params["id"])).to_json())

    async def hangup(_request: Request, params: dict[str, str]) -> Response:
        return json(200, (await manager.hangup(params["id"])).to_json())

    async def speak(request: Request, params: dict[str, str]) -> Response:
        data = await body(request)
        _only(data, {"text"})
        text = _string(data, "text", MAX_TEXT)
        if not text:
            raise BadRequest("text: required")
        return json(202, (await manager.speak(params["id"], text)).to_json())

    async def dtmf(request: Request, params: dict[str, str]) -> Response:
        data = await body(request)
        _only(data, {"digits"})
        digits = _string(data, "digits", 32)
        if not _DIGITS.fullmatch(digits):
            raise BadRequest("digits: expected 1-32 of 0-9 * # w W")
        return json(202, (await manager.send_dtmf(params["id"], digits)).to_json())

    post, get = frozenset({"POST"}), frozenset({"GET"})
    return [
        Route("/v1/calls", post, guarded(create)),
        Route("/v1/calls", get, guarded(listing)),
        Route("/v1/calls/{id}", get, guarded(one)),
        Route("/v1/calls/{id}/hangup", post, guarded(hangup)),
        Route("/v1/calls/{id}/speak", post, guarded(speak)),
        Route("/v1/calls/{id}/dtmf", post, guarded(dtmf)),
    ]


def _only(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field")


def _string(data: dict[str, Any], field: str, limit: int) -> str:
    value = data.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected a string")
    if len(value) > limit:
        raise BadRequest(f"{field}: longer than {limit} characters")
    return value


def _e164(data: dict[str, Any], field: str, *, required: bool) -> str:
    value = _string(data, field, 16)
    if not value:
        if required:
            raise BadRequest(f"{field}: required")
        return ""
    if not _E164.fullmatch(value):
        raise BadRequest(f"{field}: expected an E.164 number (+ and 2-15 digits)")
    return value
