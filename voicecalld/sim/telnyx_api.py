"""The simulated Telnyx Call Control API (carriers.md §3.4): dial, call status, call actions.

``/v2/calls``, ``/v2/calls/{call_control_id}`` and ``.../actions/{action}``, ``Authorization:
Bearer <API key>``, JSON bodies, answers wrapped in ``data``, errors as ``{"errors": [{"code",
"title", "detail"}]}``. As Telnyx documents: a command whose ``command_id`` the call has already
seen is ignored (and answered ``ok``); a command to a call that has ended is 422, code
``90018``; ``is_alive`` is false on a dial's answer (dialing is asynchronous). A command the
call's state forbids (answering an outbound call, speaking before the answer) is 422 with the
simulator's own code :data:`BAD_STATE`.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from voicecalld.carriers.forms import Fields
from voicecalld.carriers.telnyx.wire import decode_client_state
from voicecalld.sim.exchange import (
    RecordedRequest,
    Registry,
    Reply,
    Route,
    find,
    integer,
    json_object,
    our_call_id,
    text,
)
from voicecalld.sim.faults import Endpoint
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id

__all__ = ["BAD_STATE", "CALL_ENDED", "TelnyxApi", "error"]

CALL_ENDED: Final = ("90018", "Call has already ended")
BAD_STATE: Final = ("90019", "Invalid call state")
"""Not a documented Telnyx code: the simulator's answer to a command the call's state forbids."""
_NEEDS_ANSWER: Final = frozenset({"speak", "send_dtmf", "streaming_start", "streaming_stop"})
_OK: Final = Reply(200, {"data": {"result": "ok"}})


def error(status: int, code: str, title: str, detail: str) -> Reply:
    return Reply(status, {"errors": [{"code": code, "title": title, "detail": detail}]})


def dial(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    body = json_object(request)
    missing = [key for key in ("connection_id", "from", "to") if not text(body.get(key))]
    if missing:
        return error(422, "10032", "Missing required parameter", ", ".join(missing))
    if body["connection_id"] != registry.accounts.telnyx_connection_id:
        return error(422, "10015", "Invalid connection_id", "unknown connection")
    client_state = text(body.get("client_state"))
    webhook_url = text(body.get("webhook_url"))
    call = SimCall(
        carrier="telnyx",
        carrier_id=new_carrier_id("telnyx"),
        from_number=str(body["from"]),
        to=str(body["to"]),
        call_id=decode_client_state(client_state).call_id or our_call_id(webhook_url),
        status_callback=webhook_url,
        client_state=client_state,
        ring_timeout=integer(body.get("timeout_secs")),
        time_limit=integer(body.get("time_limit_secs")),
    )
    command_id = text(body.get("command_id"))
    if command_id:
        call.command_ids.add(command_id)
    registry.add(call)
    return Reply(200, {"data": {**_ids(call), "is_alive": False}})


def fetch(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "telnyx", params["id"])
    if call is None:
        return TelnyxApi.not_found(request.path)
    data = {
        **_ids(call),
        "is_alive": call.status.live,
        "call_duration": 0,
        "start_time": datetime.fromtimestamp(call.created_at, UTC).isoformat(),
        "client_state": call.client_state,
    }
    return Reply(200, {"data": data})


def act(registry: Registry, request: RecordedRequest, params: Mapping[str, str]) -> Reply:
    call = find(registry, "telnyx", params["id"])
    if call is None:
        return TelnyxApi.not_found(request.path)
    if not call.status.live:
        return error(422, *CALL_ENDED, "This call is no longer active.")
    body = json_object(request)
    command_id = text(body.get("command_id"))
    if command_id and command_id in call.command_ids:
        return _OK  # Telnyx ignores a command it has already seen
    action = params["action"]
    problem = _refusal(call, action)
    if problem:
        return error(422, *BAD_STATE, problem)
    if command_id:
        call.command_ids.add(command_id)
    call.record(action, body)
    if text(body.get("client_state")):
        call.client_state = body["client_state"]
    if action == "answer":
        call.set_status(SimStatus.IN_PROGRESS)
    elif action == "hangup":
        answered = call.status is SimStatus.IN_PROGRESS
        call.set_status(SimStatus.COMPLETED if answered else SimStatus.CANCELED)
    elif action == "reject":
        call.set_status(SimStatus.BUSY)
    return _OK


def _refusal(call: SimCall, action: str) -> str | None:
    """Why Telnyx would refuse ``action`` in the call's state (``None``: it would not)."""
    answered = call.status is SimStatus.IN_PROGRESS
    if action in ("answer", "reject") and (call.direction != "inbound" or answered):
        return f"{action} needs an inbound call that is not answered"
    if action in _NEEDS_ANSWER and not answered:
        return f"{action} needs an answered call"
    return None


def _ids(call: SimCall) -> dict[str, Any]:
    leg = str(uuid.uuid5(uuid.NAMESPACE_URL, call.carrier_id))
    return {
        "call_control_id": call.carrier_id,
        "call_leg_id": leg,
        "call_session_id": leg,
        "record_type": "call",
    }


def _action_endpoint(params: Mapping[str, str], query: Fields) -> Endpoint | None:
    try:
        return Endpoint(f"telnyx.{params['action']}")
    except ValueError:
        return None  # an action the simulator does not know: 404


_CALL: Final = r"/v2/calls/(?P<id>[^/]+)"


class TelnyxApi:
    name = "telnyx"
    prefix = "/v2/"
    routes: tuple[Route, ...] = (
        Route("POST", r"/v2/calls", dial, Endpoint.TELNYX_DIAL),
        Route("GET", _CALL, fetch, Endpoint.TELNYX_FETCH),
        Route("POST", rf"{_CALL}/actions/(?P<action>[a-z_]+)", act, _action_endpoint),
    )

    @staticmethod
    def authorized(accounts: SimAccounts, headers: Mapping[str, str]) -> bool:
        expected = f"Bearer {accounts.telnyx_api_key}".encode()
        return hmac.compare_digest(headers.get("authorization", "").encode(), expected)

    @staticmethod
    def owns(accounts: SimAccounts, params: Mapping[str, str]) -> bool:
        return True  # the key names the account; no account in the path

    @staticmethod
    def unauthorized() -> Reply:
        return error(401, "10009", "Authentication failed", "Invalid API key")

    @staticmethod
    def not_found(path: str) -> Reply:
        return error(404, "10005", "Resource not found", f"{path} was not found")

    @staticmethod
    def bad_request(message: str) -> Reply:
        return error(422, "10016", "Invalid request", message)

    @staticmethod
    def failure(status: int) -> Reply:
        return error(status, "10007", "Unexpected error", "simulated fault")
