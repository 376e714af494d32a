"""The simulated Twilio Calls API (carriers.md §1.4): create, fetch and update a call.

``/2010-04-01/Accounts/{AccountSid}/Calls.json`` and ``.../Calls/{CallSid}.json``, HTTP Basic
``AccountSid:AuthToken``, form bodies, JSON answers shaped like Twilio's Call resource, and errors
as ``{"code", "message", "more_info", "status"}``. Updates follow Twilio's rules: ``Status``
takes ``canceled`` or ``completed``; ``canceled`` leaves a call in progress alone; new TwiML
needs a call in progress; a call that has ended can no longer be changed (code 21220).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from voicecalld.carriers.forms import first
from voicecalld.sim.exchange import (
    RecordedRequest,
    Registry,
    Reply,
    Route,
    basic_credentials_match,
    find,
    integer,
    our_call_id,
)
from voicecalld.sim.faults import Endpoint
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id

__all__ = ["API_VERSION", "TwilioApi", "error"]

API_VERSION: Final = "2010-04-01"
_STATUS_UPDATES: Final = frozenset({"canceled", "completed"})
_NOT_IN_PROGRESS: Final = "Call is not in-progress. Cannot redirect."


def error(status: int, code: int, message: str) -> Reply:
    return Reply(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def create(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    form = request.form
    to, from_number, url = first(form, "To"), first(form, "From"), first(form, "Url")
    if not to:
        return error(400, 21201, "No 'To' number is specified")
    if not from_number:
        return error(400, 21213, "No 'From' number is specified")
    if not (url or first(form, "Twiml") or first(form, "ApplicationSid")):
        return error(400, 21205, "Url parameter is required")
    callback = first(form, "StatusCallback")
    call = SimCall(
        carrier="twilio",
        carrier_id=new_carrier_id("twilio"),
        from_number=from_number,
        to=to,
        call_id=our_call_id(url) or our_call_id(callback),
        answer_url=url,
        status_callback=callback,
        status_events=tuple(form.get("StatusCallbackEvent", [])),
        ring_timeout=integer(first(form, "Timeout")),
        time_limit=integer(first(form, "TimeLimit")),
    )
    registry.add(call)
    return Reply(201, resource(call, registry.accounts.twilio_account_sid))


def fetch(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "twilio", params["sid"])
    if call is None:
        return TwilioApi.not_found(request.path)
    return Reply(200, resource(call, registry.accounts.twilio_account_sid))


def update(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "twilio", params["sid"])
    if call is None:
        return TwilioApi.not_found(request.path)
    if not call.status.live:
        return error(400, 21220, _NOT_IN_PROGRESS)
    form = request.form
    status = first(form, "Status")
    if status is not None:
        if status not in _STATUS_UPDATES:
            return error(400, 20001, f"Invalid Status {status!r:.40}")
        call.record("status", {"Status": status})
        if call.status is not SimStatus.IN_PROGRESS:
            call.set_status(SimStatus.CANCELED)
        elif status == "completed":  # ``canceled`` leaves a call in progress alone
            call.set_status(SimStatus.COMPLETED)
    elif first(form, "Twiml") is not None or first(form, "Url") is not None:
        if call.status is not SimStatus.IN_PROGRESS:
            return error(400, 21220, _NOT_IN_PROGRESS)
        call.record("twiml", {key: values[0] for key, values in form.items()})
    return Reply(200, resource(call, registry.accounts.twilio_account_sid))


def resource(call: SimCall, account_sid: str) -> dict[str, Any]:
    """The Call resource as Twilio answers it (the fields voicecalld and the SDK read)."""
    created = format_datetime(datetime.fromtimestamp(call.created_at, UTC), usegmt=True)
    return {
        "sid": call.carrier_id,
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "to": call.to,
        "to_formatted": call.to,
        "from": call.from_number,
        "from_formatted": call.from_number,
        "status": call.status.value,
        "direction": "inbound" if call.direction == "inbound" else "outbound-api",
        "date_created": created,
        "date_updated": created,
        "start_time": None,
        "end_time": None,
        "duration": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "answered_by": None,
        "caller_name": None,
        "forwarded_from": None,
        "group_sid": None,
        "queue_time": "0",
        "trunk_sid": None,
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call.carrier_id}.json",
        "subresource_uris": {},
    }


_CALLS: Final = rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls"
_CALL: Final = rf"{_CALLS}/(?P<sid>[^/]+)\.json"


class TwilioApi:
    name = "twilio"
    prefix = f"/{API_VERSION}/"
    routes: tuple[Route, ...] = (
        Route("POST", rf"{_CALLS}\.json", create, Endpoint.TWILIO_CREATE),
        Route("GET", _CALL, fetch, Endpoint.TWILIO_FETCH),
        Route("POST", _CALL, update, Endpoint.TWILIO_UPDATE),
    )

    @staticmethod
    def authorized(accounts: SimAccounts, headers: Mapping[str, str]) -> bool:
        return basic_credentials_match(
            headers, accounts.twilio_account_sid, accounts.twilio_auth_token
        )

    @staticmethod
    def owns(accounts: SimAccounts, params: Mapping[str, str]) -> bool:
        return params.get("account") == accounts.twilio_account_sid

    @staticmethod
    def unauthorized() -> Reply:
        return error(401, 20003, "Authenticate")

    @staticmethod
    def not_found(path: str) -> Reply:
        return error(404, 20404, f"The requested resource {path} was not found")

    @staticmethod
    def bad_request(message: str) -> Reply:
        return error(400, 20001, message)

    @staticmethod
    def failure(status: int) -> Reply:
        return error(status, 20500, "Internal Server Error")
