"""A call manager running in the test's nursery, against the fake carriers over real HTTP.

What the restore, reaper and stream-loss tests share:

- :func:`virtual_now`: the manager's wall clock driven by trio's clock, so under a mock clock
  "ten minutes later" for the manager is ten virtual minutes for its timers too;
- :class:`CountingCarriers`: the simulator's REST surface, counting requests in flight (per path
  and in all) to show bounded concurrency and "one hang-up in flight per call";
- :class:`Rig`: a real SQLite store, the real Twilio, Plivo and Telnyx carriers pointed at the
  simulator (or at a closed port: connection refused), the mock carrier, and the manager, started
  in the order the runtime starts them (store, carriers, calls, then restore and reaper);
- record factories: a call as the store would hold it after a crash, with its twin at the
  carrier.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import (
    Call,
    Direction,
    EventType,
    Mode,
    NewEvent,
    State,
    new_call_id,
)
from voicecalld.calls.reaper import Reaper
from voicecalld.calls.reconcile import Reconciler
from voicecalld.carriers.base import Carrier, Instructions, WebhookEvent
from voicecalld.carriers.mock import MockCarrier, MockTimings
from voicecalld.carriers.plivo.carrier import PlivoCarrier
from voicecalld.carriers.registry import REQUEST_TIMEOUT
from voicecalld.carriers.rest import RetryPolicy
from voicecalld.carriers.telnyx.carrier import TelnyxCarrier
from voicecalld.carriers.twilio.carrier import TwilioCarrier
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import Config
from voicecalld.metrics import Metrics
from voicecalld.sim.faults import Endpoint
from voicecalld.sim.rest import FakeCarriers, serve_fake_carriers
from voicecalld.sim.state import SimCall, SimStatus, new_carrier_id
from voicecalld.store.sqlite import SqliteStore
from voicecalld.testing import free_port, make_config

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROVIDERS = ("twilio", "plivo", "telnyx", "mock")
REST_PROVIDERS = ("twilio", "plivo", "telnyx")
URLS = PublicUrls("https://voice.example.com")
FROM, TO = "+14155550100", "+14155550199"
LOOKUP: Mapping[str, Endpoint] = {
    "twilio": Endpoint.TWILIO_FETCH,
    "plivo": Endpoint.PLIVO_LIVE,
    "telnyx": Endpoint.TELNYX_FETCH,
}
"""The first request of each carrier's status lookup."""
ONE_ATTEMPT = RetryPolicy(attempts=1)


def hangup_endpoint(provider: str, *, answered: bool) -> Endpoint:
    """Where each carrier's hang-up of a call goes first."""
    if provider == "twilio":
        return Endpoint.TWILIO_UPDATE
    if provider == "plivo":
        return Endpoint.PLIVO_HANGUP if answered else Endpoint.PLIVO_CANCEL
    assert provider == "telnyx"
    return Endpoint.TELNYX_HANGUP


HANGUP_ACTIONS = frozenset({"status", "hangup", "cancel"})
"""What the simulator records when a call is hung up (Twilio ``Status=``, Plivo hangup or
cancel, Telnyx ``actions/hangup``)."""


def virtual_now() -> datetime:
    """Wall time for the manager, on trio's clock (to the millisecond, as the store keeps it)."""
    now = T0 + timedelta(seconds=trio.current_time())
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class CountingCarriers(FakeCarriers):
    """The fake carriers, counting requests in flight: per path, in all, and the peaks."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.total = 0
        self.peak_total = 0
        self.broken: set[str] = set()
        """Carrier ids whose every request is answered 500 (a fault on one call only)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path: str = scope["path"]
        self.in_flight[path] += 1
        self.total += 1
        self.peak[path] = max(self.peak[path], self.in_flight[path])
        self.peak_total = max(self.peak_total, self.total)
        try:
            if any(carrier_id in path for carrier_id in self.broken):
                await _internal_error(send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            self.in_flight[path] -= 1
            self.total -= 1

    def hangups(self, sim_call: SimCall) -> int:
        return sum(name in HANGUP_ACTIONS for name, _ in sim_call.actions)


async def _internal_error(send: Any) -> None:
    body = b'{"error": "simulated fault on this call"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Directory(dict[str, Carrier]):
    """The enabled carriers by name (the manager's ``CarrierDirectory``); tests swap entries,
    as a reload would."""


@attrs.define
class Rig:
    """Everything a restarted daemon has that these tests need, minus HTTP serving."""

    config: Config
    sim: CountingCarriers
    store: SqliteStore
    client: httpx.AsyncClient
    nursery: trio.Nursery
    carriers: Directory = attrs.field(factory=Directory)
    metrics: Metrics = attrs.field(factory=Metrics)
    manager: CallManager | None = None
    refused_url: str = ""
    mock_placed: set[str] = attrs.field(factory=set)
    """Carrier ids of the calls the mock carrier was made to play."""

    def carrier(self, provider: str, *, refused: bool = False) -> Carrier:
        """The real carrier, pointed at the simulator, or at a closed port when ``refused``.

        Each request is tried once (:data:`ONE_ATTEMPT`): the REST client's own retries are
        tested with the carriers; here they would only multiply the virtual sleeps (each costs
        the mock clock's 50 ms of real idle time) without changing what the manager sees.
        """
        base = self.refused_url if refused else self.sim.base_url
        calls = self.config.calls
        if provider == "twilio":
            twilio = attrs.evolve(self.sim.twilio_config(), api_base_url=base)
            return TwilioCarrier(twilio, URLS, self.client, calls, retry=ONE_ATTEMPT)
        if provider == "plivo":
            plivo = attrs.evolve(self.sim.plivo_config(), api_base_url=base)
            return PlivoCarrier(plivo, URLS, self.client, calls, retry=ONE_ATTEMPT)
        if provider == "telnyx":
            telnyx = attrs.evolve(self.sim.telnyx_config(), api_base_url=base)
            return TelnyxCarrier(telnyx, URLS, self.client, calls, retry=ONE_ATTEMPT)
        assert provider == "mock"
        far = MockTimings(ring_after=10_000.0, answer_after=20_000.0)  # it stays as it is
        return MockCarrier("secret", self.nursery, self._deliver, far)

    async def _deliver(self, provider: str, event: WebhookEvent) -> Instructions:
        return await self.running.on_event(provider, event)

    @property
    def running(self) -> CallManager:
        assert self.manager is not None, "start() the manager first"
        return self.manager

    async def start(self) -> CallManager:
        """The ``calls`` step: the manager, loading what the store owes, its timers running."""
        manager = CallManager(self.config, self.store, self.carriers, self.metrics, now=virtual_now)
        await self.nursery.start(manager.run)
        self.manager = manager
        return manager

    async def reconcile(self) -> Reconciler:
        """The ``restore`` step: returns once every open call was settled once."""
        reconciler = Reconciler(self.running, self.metrics)
        await self.nursery.start(reconciler.run)
        return reconciler

    async def reap(self) -> Reaper:
        reaper = Reaper(self.running, self.metrics)
        await self.nursery.start(reaper.run)
        return reaper

    async def save(self, *calls: Call) -> None:
        """Records as a daemon that died left them in the store."""
        await self.store.write(list(calls), [NewEvent(EventType.CREATED, c) for c in calls])

    async def stored(self, call_id: str) -> Call:
        call = await self.store.get(call_id)
        assert call is not None
        return call

    async def hung_up(self, provider: str, record: Call) -> bool:
        """Whether voicecalld's hang-up reached the carrier."""
        if provider == "mock":  # placed live, and no longer played by the mock
            placed = record.provider_call_id in self.mock_placed
            return placed and not (await self.carriers["mock"].status(record)).live
        sim_call = self.sim_call(record)
        return sim_call is not None and self.sim.hangups(sim_call) > 0

    def sim_call(self, record: Call) -> SimCall | None:
        """The carrier's side of ``record`` (Plivo: found by its CallUUID or request UUID)."""
        for sim_call in self.sim.calls.values():
            if record.provider_call_id and record.provider_call_id in (
                sim_call.carrier_id,
                sim_call.request_id,
            ):
                return sim_call
        return None


@asynccontextmanager
async def rig(tmp_path: Path, **calls: Any) -> AsyncIterator[Rig]:
    """A :class:`Rig` with every carrier enabled; ``calls`` overrides ``[calls]`` settings."""
    config = make_config(tmp_path, calls={"max_concurrent": 100_000, **calls})
    async with (
        serve_fake_carriers(CountingCarriers()) as sim,
        SqliteStore.open(tmp_path) as store,
        httpx.AsyncClient(follow_redirects=False, timeout=REQUEST_TIMEOUT) as client,
        trio.open_nursery() as nursery,
    ):
        assert isinstance(sim, CountingCarriers)
        made = Rig(
            config, sim, store, client, nursery, refused_url=f"http://127.0.0.1:{free_port()}"
        )
        for provider in PROVIDERS:
            made.carriers[provider] = made.carrier(provider)
        yield made
        nursery.cancel_scope.cancel()


def record(
    provider: str,
    carrier_id: str | None,
    *,
    age: float = 10.0,
    answered_age: float | None = None,
    state: State | None = None,
    mode: Mode = Mode.CONVERSATION,
    metadata: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Call:
    """A call voicecalld placed ``age`` seconds ago (answered ``answered_age`` ago), as stored.

    ``now`` defaults to :func:`virtual_now`; a daemon run by ``voicecalld.testing`` or in a
    subprocess reads the real wall clock instead.
    """
    now = now or virtual_now()
    answered_at = None if answered_age is None else now - timedelta(seconds=answered_age)
    if state is None:
        state = State.RINGING if answered_at is None else State.ACTIVE
    created = now - timedelta(seconds=age)
    return Call(
        id=new_call_id(),
        provider=provider,
        direction=Direction.OUTBOUND,
        from_number=FROM,
        to=TO,
        created_at=created,
        updated_at=answered_at or created,
        provider_call_id=carrier_id,
        state=state,
        mode=mode,
        answered_at=answered_at,
        metadata=dict(metadata or {}),
    )


async def at_carrier(
    made: Rig,
    provider: str,
    status: SimStatus,
    *,
    age: float = 10.0,
    answered_age: float | None = None,
    state: State | None = None,
    mode: Mode = Mode.CONVERSATION,
    heard_from: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Call:
    """A record whose call exists at the carrier with ``status``.

    ``heard_from``: voicecalld saw a webhook for it, so (Plivo) it knows the CallUUID and keeps
    the request UUID in ``metadata.request_id``; otherwise it knows only what placing the call
    returned (Plivo: the request UUID).
    """
    if provider == "mock":
        placeholder = record(
            "mock", None, age=age, answered_age=answered_age, state=state, metadata=metadata
        )
        if status.live:
            sid = await made.carriers["mock"].place(placeholder)
            made.mock_placed.add(sid)
        else:
            sid = "MK" + secrets.token_hex(16)  # a call the mock does not know: gone
        return attrs.evolve(placeholder, provider_call_id=sid, mode=mode)
    sim_call = made.sim.add_call(provider, from_number=FROM, to=TO, direction="outbound")
    sim_call.set_status(status)
    carrier_id: str = sim_call.carrier_id
    metadata = dict(metadata or {})
    if provider == "plivo":
        assert sim_call.request_id is not None
        if heard_from:
            metadata["request_id"] = sim_call.request_id
        else:
            carrier_id = sim_call.request_id
    made_record = record(
        provider,
        carrier_id,
        age=age,
        answered_age=answered_age,
        state=state,
        mode=mode,
        metadata=metadata,
    )
    sim_call.call_id = made_record.id
    return made_record


def unknown_at_carrier(provider: str, **fields: Any) -> Call:
    """A record whose carrier id the carrier does not know (a 404 everywhere)."""
    carrier_id = "MK" + secrets.token_hex(16) if provider == "mock" else new_carrier_id(provider)
    metadata = {"request_id": new_carrier_id("plivo")} if provider == "plivo" else {}
    return record(provider, carrier_id, metadata=metadata, **fields)


def messages(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]
