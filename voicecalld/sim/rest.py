"""The carrier simulator's REST surface: Twilio, Plivo and Telnyx call APIs on one ASGI app.

Each carrier lives under its real path prefix (``/2010-04-01/Accounts/...``, ``/v1/Account/...``,
``/v2/calls...``), so one ``http://127.0.0.1:PORT`` serves as ``api_base_url`` for all three. A
request is recorded, then its credentials are checked as the carrier checks them (401), then its
route and account (404), then any armed fault, then the carrier's handler (:mod:`.twilio_api`,
:mod:`.plivo_api`, :mod:`.telnyx_api`) answers in the carrier's own shapes.

Driving it from Python: :meth:`FakeCarriers.add_call` (an inbound call, or one someone else
placed through the carrier's API), :meth:`FakeCarriers.set_status` ("this call is now busy"),
:meth:`FakeCarriers.arm` (a :class:`~.faults.Fault` on an :class:`~.faults.Endpoint`: a forced
status, a delay, a dropped connection, a redirect to another host; before or after the request
takes effect), and :attr:`FakeCarriers.requests` (everything received, in order).
:func:`serve_fake_carriers` serves it with hypercorn on 127.0.0.1, port 0.

It does not move calls along by itself (no ringing, no answering, no webhooks): that is the
simulator's player (:mod:`.player`), which hears of every call created here through
:attr:`FakeCarriers.created_hooks`, and of every change to one through
:meth:`~.state.SimCall.watch`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from voicecalld.carriers.forms import parse_form
from voicecalld.config import PlivoConfig, TelnyxConfig, TwilioConfig
from voicecalld.sim.exchange import CarrierApi, RecordedRequest, Reply, Route
from voicecalld.sim.faults import Endpoint, Fault, FaultBook
from voicecalld.sim.plivo_api import PlivoApi
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus, new_carrier_id
from voicecalld.sim.telnyx_api import TelnyxApi
from voicecalld.sim.twilio_api import TwilioApi

__all__ = ["FakeCarriers", "RecordedRequest", "SimAccounts", "serve_fake_carriers"]

MAX_BODY: Final = 1024 * 1024
APIS: Final[tuple[CarrierApi, ...]] = (TwilioApi(), PlivoApi(), TelnyxApi())

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FakeCarriers:
    """The simulated carriers' REST APIs (an ASGI app), and the Python API that drives them."""

    def __init__(
        self, accounts: SimAccounts | None = None, *, base_url: str = "http://fake-carriers.test"
    ) -> None:
        self.accounts = accounts or SimAccounts()
        self.base_url = base_url
        """Where the simulator is served (:func:`serve_fake_carriers` sets the real one)."""
        self.calls: dict[str, SimCall] = {}
        """Every simulated call, by carrier id."""
        self.requests: list[RecordedRequest] = []
        self.faults = FaultBook()
        self.created_hooks: list[Callable[[SimCall], None]] = []
        """Called (synchronously) with each call created through a carrier's API."""

    # -- driving it --------------------------------------------------------------------------------

    def twilio_config(self) -> TwilioConfig:
        """A ``[providers.twilio]`` pointing at this simulator, with its credentials."""
        return TwilioConfig(
            enabled=True,
            account_sid=self.accounts.twilio_account_sid,
            auth_token=self.accounts.twilio_auth_token,
            api_base_url=self.base_url,
        )

    def plivo_config(self) -> PlivoConfig:
        return PlivoConfig(
            enabled=True,
            auth_id=self.accounts.plivo_auth_id,
            auth_token=self.accounts.plivo_auth_token,
            api_base_url=self.base_url,
        )

    def telnyx_config(self) -> TelnyxConfig:
        return TelnyxConfig(
            enabled=True,
            api_key=self.accounts.telnyx_api_key,
            public_key=self.accounts.telnyx_public_key,
            connection_id=self.accounts.telnyx_connection_id,
            api_base_url=self.base_url,
        )

    def add_call(
        self,
        carrier: str,
        *,
        from_number: str,
        to: str,
        status: SimStatus = SimStatus.RINGING,
        direction: str = "inbound",
        call_id: str | None = None,
    ) -> SimCall:
        """A call not created through this API: an inbound one, or one placed by someone else
        through the carrier's API (``direction="outbound"``; Plivo's gets a request UUID)."""
        call = SimCall(
            carrier=carrier,
            carrier_id=new_carrier_id(carrier),
            from_number=from_number,
            to=to,
            direction=direction,
            call_id=call_id,
            request_id=new_carrier_id("plivo")
            if carrier == "plivo" and direction != "inbound"
            else None,
        )
        call.set_status(status)
        self.calls[call.carrier_id] = call
        return call

    def add(self, call: SimCall) -> None:
        self.calls[call.carrier_id] = call
        for hook in self.created_hooks:
            hook(call)

    def call(self, carrier_id: str) -> SimCall:
        return self.calls[carrier_id]

    def set_status(self, carrier_id: str, status: SimStatus) -> SimCall:
        """Override a call's carrier-side status ("this call is now busy")."""
        call = self.calls[carrier_id]
        call.set_status(status)
        return call

    def arm(self, endpoint: Endpoint, fault: Fault) -> None:
        self.faults.arm(endpoint, fault)

    def disarm(self, endpoint: Endpoint | None = None) -> None:
        self.faults.disarm(endpoint)

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        return [request for request in self.requests if request.endpoint is endpoint]

    # -- ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _body(receive)
        method: str = scope["method"]
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        api = next((api for api in APIS if path.startswith(api.prefix)), None)
        route, params = _match(api, method, path)
        try:
            query_fields = parse_form(query)
        except ValueError:
            query_fields = {}
        endpoint = route.endpoint_for(params, query_fields) if route is not None else None
        headers = _headers(scope["headers"])
        request = RecordedRequest(endpoint, method, path, query, headers, body or b"")
        self.requests.append(request)

        if api is None:
            await _send(send, Reply(404, {"error": "no such API"}))
        elif body is None:
            await _send(send, Reply(413, {"error": "request body too large"}))
        elif not api.authorized(self.accounts, headers):
            await _send(send, api.unauthorized())
        elif route is None or endpoint is None or not api.owns(self.accounts, params):
            await _send(send, api.not_found(path))
        else:
            await self._handle(api, route, request, params, send)

    async def _handle(
        self,
        api: CarrierApi,
        route: Route,
        request: RecordedRequest,
        params: Mapping[str, str],
        send: Send,
    ) -> None:
        assert request.endpoint is not None
        fault = self.faults.take(request.endpoint)
        if fault is not None and not fault.after and await _misbehave(fault, api, send):
            return
        try:
            reply = route.handler(self, request, params)
        except ValueError as error:  # a body the carrier would refuse
            reply = api.bad_request(str(error))
        if fault is not None and fault.after and await _misbehave(fault, api, send):
            return
        await _send(send, reply)


def _match(
    api: CarrierApi | None, method: str, path: str
) -> tuple[Route | None, Mapping[str, str]]:
    for route in api.routes if api is not None else ():
        found = route.pattern.fullmatch(path)
        if found is not None and route.method == method:
            return route, found.groupdict()
    return None, {}


async def _misbehave(fault: Fault, api: CarrierApi, send: Send) -> bool:
    """Act out ``fault``; whether that answered the request (else the request goes on)."""
    if fault.delay:
        await trio.sleep(fault.delay)
    if fault.drop:
        # promise a body, send one byte of it, and leave: the server closes the connection
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        return True
    if fault.redirect is not None:
        await _send(send, Reply(302, None, ((b"location", fault.redirect.encode()),)))
        return True
    if fault.status is not None:
        body = fault.body
        await _send(send, api.failure(fault.status) if body is None else Reply(fault.status, body))
        return True
    return False


async def _send(send: Send, reply: Reply) -> None:
    body = b"" if reply.data is None else orjson.dumps(reply.data)
    headers = [(b"content-length", str(len(body)).encode()), *reply.headers]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes | None:
    """The request body; ``None`` when it is over :data:`MAX_BODY`."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body", False):
            break
    return bytes(body)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


@asynccontextmanager
async def serve_fake_carriers(
    carriers: FakeCarriers | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeCarriers]:
    """Serve the simulated carriers' REST APIs (on 127.0.0.1, port 0, unless told otherwise)
    for the block's duration.

    ``sim.base_url`` is then the served address (``http://127.0.0.1:PORT``)::

        async with serve_fake_carriers() as sim:
            carrier = TwilioCarrier(sim.twilio_config(), urls, client, calls)
    """
    sim = carriers or FakeCarriers()
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.errorlog = logging.getLogger("voicecalld.sim.http")
    config.graceful_timeout = 0.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, sim, config)
        sim.base_url = binds[0]
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()
