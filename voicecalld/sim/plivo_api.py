"""The simulated Plivo Call API (carriers.md §2.4): create, look up, hang up, cancel, speak, DTMF.

``/v1/Account/{auth_id}/...``, every path ending in ``/``, HTTP Basic ``auth_id:auth_token``,
JSON bodies and answers, errors as ``{"api_id", "error"}``. Creating a call answers a *request*
UUID; the call's own CallUUID is another (a webhook would carry both). The lookups keep Plivo's
ambiguity: ``?status=live`` finds ringing and answered calls by CallUUID, ``?status=queued``
finds queued calls by request UUID, and the detail record (no ``status``) exists only once the
call has ended, with the hang-up cause codes Plivo documents; anything else is 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from voicecalld.carriers.forms import Fields, first
from voicecalld.sim.exchange import (
    RecordedRequest,
    Registry,
    Reply,
    Route,
    basic_credentials_match,
    find,
    integer,
    json_object,
    our_call_id,
    text,
)
from voicecalld.sim.faults import Endpoint
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id

__all__ = ["PlivoApi", "error"]

HANGUP_CAUSES: Final = {
    SimStatus.COMPLETED: (4000, "Normal Hangup", "Callee"),
    SimStatus.BUSY: (3010, "Busy Line", "Callee"),
    SimStatus.NO_ANSWER: (3000, "No Answer", "Callee"),
    SimStatus.FAILED: (2000, "Destination Unreachable", "Error"),
    SimStatus.CANCELED: (1000, "Cancelled", "Caller"),
}
"""The detail record's ``hangup_cause_code``/``_name``/``hangup_source`` for each ending."""
_LIVE: Final = (SimStatus.RINGING, SimStatus.IN_PROGRESS)


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message, **_api_id()})


def create(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    body = json_object(request)
    missing = [key for key in ("from", "to", "answer_url") if not text(body.get(key))]
    if missing:
        return error(400, f"{', '.join(missing)} must be present")
    answer_url = str(body["answer_url"])
    call = SimCall(
        carrier="plivo",
        carrier_id=new_carrier_id("plivo"),
        request_id=str(uuid.uuid4()),
        from_number=str(body["from"]),
        to=str(body["to"]),
        call_id=our_call_id(answer_url),
        answer_url=answer_url,
        ring_url=text(body.get("ring_url")),
        status_callback=text(body.get("hangup_url")) or answer_url,
        ring_timeout=integer(body.get("ring_timeout")),
        time_limit=integer(body.get("time_limit")),
    )
    registry.add(call)
    return Reply(201, {"message": "call fired", "request_uuid": call.request_id, **_api_id()})


def live(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "plivo", params["uuid"])
    if call is None or call.status not in _LIVE:
        return error(404, "call not found")
    return Reply(200, _live_call(call))


def queued(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = by_request(registry, params["uuid"])
    if call is None or call.status is not SimStatus.QUEUED:
        return error(404, "call not found")
    return Reply(200, _live_call(call))


def record(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "plivo", params["uuid"])
    if call is None or call.status.live:  # no detail record before the call ends
        return error(404, "call not found")
    return Reply(200, _detail_record(call, registry.accounts.plivo_auth_id))


def lookup(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    """``GET Call/{uuid}/``: live, queued or the detail record, by ``?status=``."""
    handler = {Endpoint.PLIVO_LIVE: live, Endpoint.PLIVO_QUEUED: queued}.get(
        request.endpoint or Endpoint.PLIVO_CDR, record
    )
    return handler(registry, request, params)


def hangup(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "plivo", params["uuid"])
    if call is None or call.status not in _LIVE:
        return error(404, "call not found")
    call.record("hangup", json_object(request))
    answered = call.status is SimStatus.IN_PROGRESS
    call.set_status(SimStatus.COMPLETED if answered else SimStatus.CANCELED)
    return Reply(204)


def cancel(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = by_request(registry, params["uuid"])
    if call is None or call.status not in (SimStatus.QUEUED, SimStatus.RINGING):
        return error(404, "request not found")
    call.record("cancel", {})
    call.set_status(SimStatus.CANCELED)
    return Reply(204)


def speak(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    return _act(registry, request, params, "speak", Reply(200, {"message": "speak started"}))


def dtmf(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    return _act(registry, request, params, "dtmf", Reply(202, {"message": "digits sent"}))


def _act(
    registry: Registry,
    request: RecordedRequest,
    params: Mapping[str, str],
    name: str,
    done: Reply,
) -> Reply:
    call = find(registry, "plivo", params["uuid"])
    if call is None or call.status is not SimStatus.IN_PROGRESS:
        return error(404, "call not found")
    call.record(name, json_object(request))
    return Reply(done.status, {**done.data, **_api_id()})


def by_request(registry: Registry, request_uuid: str) -> SimCall | None:
    for call in registry.calls.values():
        if call.carrier == "plivo" and call.request_id == request_uuid:
            return call
    return None


def _live_call(call: SimCall) -> dict[str, Any]:
    return {
        "call_status": call.status.value,
        "call_uuid": call.carrier_id,
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to,
        "request_uuid": call.request_id,
        "caller_name": call.from_number,
        "session_start": datetime.fromtimestamp(call.created_at, UTC).isoformat(sep=" "),
        **_api_id(),
    }


def _detail_record(call: SimCall, auth_id: str) -> dict[str, Any]:
    code, name, source = HANGUP_CAUSES[call.status]
    started = datetime.fromtimestamp(call.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S%z")
    return {
        "call_uuid": call.carrier_id,
        "call_direction": call.direction,
        "from_number": call.from_number,
        "to_number": call.to,
        "initiation_time": started,
        "answer_time": started if call.answered else None,
        "end_time": started,
        "bill_duration": 0,
        "billed_duration": 0,
        "call_duration": 0,
        "hangup_cause_code": code,
        "hangup_cause_name": name,
        "hangup_source": source,
        "parent_call_uuid": None,
        "resource_uri": f"/v1/Account/{auth_id}/Call/{call.carrier_id}/",
        "total_amount": "0.00000",
        "total_rate": "0.00850",
        **_api_id(),
    }


def _api_id() -> dict[str, str]:
    return {"api_id": str(uuid.uuid4())}


def _lookup_endpoint(params: Mapping[str, str], query: Fields) -> Endpoint:
    status = first(query, "status")
    if status == "live":
        return Endpoint.PLIVO_LIVE
    if status == "queued":
        return Endpoint.PLIVO_QUEUED
    return Endpoint.PLIVO_CDR


_ACCOUNT: Final = r"/v1/Account/(?P<account>[^/]+)"
_CALL: Final = rf"{_ACCOUNT}/Call/(?P<uuid>[^/]+)/"


class PlivoApi:
    name = "plivo"
    prefix = "/v1/Account/"
    routes: tuple[Route, ...] = (
        Route("POST", rf"{_ACCOUNT}/Call/", create, Endpoint.PLIVO_CREATE),
        Route("GET", _CALL, lookup, _lookup_endpoint),
        Route("DELETE", _CALL, hangup, Endpoint.PLIVO_HANGUP),
        Route("DELETE", rf"{_ACCOUNT}/Request/(?P<uuid>[^/]+)/", cancel, Endpoint.PLIVO_CANCEL),
        Route("POST", rf"{_CALL}Speak/", speak, Endpoint.PLIVO_SPEAK),
        Route("POST", rf"{_CALL}DTMF/", dtmf, Endpoint.PLIVO_DTMF),
    )

    @staticmethod
    def authorized(accounts: SimAccounts, headers: Mapping[str, str]) -> bool:
        return basic_credentials_match(headers, accounts.plivo_auth_id, accounts.plivo_auth_token)

    @staticmethod
    def owns(accounts: SimAccounts, params: Mapping[str, str]) -> bool:
        return params.get("account") == accounts.plivo_auth_id

    @staticmethod
    def unauthorized() -> Reply:
        return error(401, "Authentication failed")

    @staticmethod
    def not_found(path: str) -> Reply:
        return error(404, "not found")

    @staticmethod
    def bad_request(message: str) -> Reply:
        return error(400, message)

    @staticmethod
    def failure(status: int) -> Reply:
        return error(status, "internal error")
