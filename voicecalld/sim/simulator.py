"""The carrier simulator (SPEC §9): Twilio, Plivo and Telnyx on loopback, REST and webhooks and
media, for the demo, the end-to-end tests, the benchmarks and users' own tests.

:func:`serve_simulator` serves the three carriers' REST APIs under one local base URL (what
voicecalld's ``api_base_url`` points at) and plays every call as the carrier would
(:mod:`.player`): the calls voicecalld places through those APIs, and calls the test starts:
inbound ones (:meth:`Simulator.inbound`) and ones placed "directly through the carrier's API"
by someone else, pointed at voicecalld's webhook (:meth:`Simulator.outbound_api`).

What the far end of a call does is a :class:`~.scenario.Scenario`: the simulator's default,
one planned for a number (:meth:`Simulator.plan`), or the mock carrier's convention (a number
ending in ``486`` is busy, ``408`` never answers, ``503`` fails). REST faults are armed on
:attr:`Simulator.carriers` (:meth:`~.rest.FakeCarriers.arm`); webhook and stream faults are
part of a scenario.

Example::

    async with serve_simulator("http://127.0.0.1:8080") as sim:
        config = ... sim.providers() ...          # point voicecalld's carriers at it
        call = sim.inbound("twilio", from_number="+14155550100", to="+14155550199")
        await call.ended.wait()
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import trio

from voicecalld.sim.audio import Audio
from voicecalld.sim.dialect import Dialect
from voicecalld.sim.media import Pacer
from voicecalld.sim.player import Rig, SimulatedCall
from voicecalld.sim.plivo_voice import PlivoVoice
from voicecalld.sim.rest import FakeCarriers, serve_fake_carriers
from voicecalld.sim.scenario import Scenario, by_number
from voicecalld.sim.sender import Sender
from voicecalld.sim.state import CARRIERS, SimAccounts, SimCall, SimStatus, new_carrier_id
from voicecalld.sim.stats import Tally
from voicecalld.sim.telnyx_voice import TelnyxVoice
from voicecalld.sim.twilio_voice import TwilioVoice

__all__ = ["Simulator", "serve_simulator"]

WEBHOOK_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
TWILIO_EVENTS: Final = ("initiated", "ringing", "answered", "completed")


class Simulator:
    def __init__(
        self,
        carriers: FakeCarriers,
        rig: Rig,
        nursery: trio.Nursery,
        webhook_base: str,
        scenario: Scenario,
    ) -> None:
        self.carriers = carriers
        """The REST half: its calls, recorded requests and armed faults."""
        self.rig = rig
        self.webhook_base = webhook_base.rstrip("/")
        """Where voicecalld takes webhooks (its ``server.public_url``)."""
        self.scenario = scenario
        """What the far end does when nothing else says."""
        self.calls: list[SimulatedCall] = []
        """Every call played, in the order it began."""
        self._nursery = nursery
        self._plans: dict[str, Scenario] = {}
        self._dialects: dict[str, Dialect] = {
            "twilio": TwilioVoice(rig.accounts),
            "plivo": PlivoVoice(rig.accounts),
            "telnyx": TelnyxVoice(rig.accounts),
        }
        self._by_id: dict[str, SimulatedCall] = {}
        carriers.created_hooks.append(self._created)

    @property
    def accounts(self) -> SimAccounts:
        return self.carriers.accounts

    @property
    def tally(self) -> Tally:
        return self.rig.tally

    @property
    def base_url(self) -> str:
        """The carriers' REST base URL (voicecalld's ``api_base_url``)."""
        return self.carriers.base_url

    def providers(self) -> dict[str, Any]:
        """A ``[providers]`` TOML table enabling the three carriers, pointed at this simulator."""
        accounts = self.accounts
        return {
            "twilio": {
                "enabled": True,
                "account_sid": accounts.twilio_account_sid,
                "auth_token": accounts.twilio_auth_token,
                "api_base_url": self.base_url,
            },
            "plivo": {
                "enabled": True,
                "auth_id": accounts.plivo_auth_id,
                "auth_token": accounts.plivo_auth_token,
                "api_base_url": self.base_url,
            },
            "telnyx": {
                "enabled": True,
                "api_key": accounts.telnyx_api_key,
                "public_key": accounts.telnyx_public_key,
                "connection_id": accounts.telnyx_connection_id,
                "api_base_url": self.base_url,
            },
        }

    def plan(self, to: str, scenario: Scenario) -> None:
        """What the callee at ``to`` does when voicecalld next calls it."""
        self._plans[to] = scenario

    def call(self, carrier_id: str) -> SimulatedCall:
        """A played call by its carrier id (Plivo: the CallUUID or the request UUID)."""
        return self._by_id[carrier_id]

    def inbound(
        self, carrier: str, *, from_number: str, to: str, scenario: Scenario | None = None
    ) -> SimulatedCall:
        """Someone calls ``to`` (one of voicecalld's numbers) through ``carrier``."""
        call = self._new(carrier, "inbound", from_number, to)
        return self._play(call, scenario or self.scenario)

    def outbound_api(
        self, carrier: str, *, from_number: str, to: str, scenario: Scenario | None = None
    ) -> SimulatedCall:
        """Someone places a call directly through ``carrier``'s API, pointed at voicecalld's
        webhook (no call id of voicecalld's in it): the daemon meets it as ``outbound-api``."""
        call = self._new(carrier, "outbound", from_number, to)
        if carrier == "twilio":
            call.status_events = TWILIO_EVENTS
        if carrier == "plivo":
            call.request_id = new_carrier_id("plivo")
        return self._play(call, scenario or by_number(to, self.scenario))

    def _new(self, carrier: str, direction: str, from_number: str, to: str) -> SimCall:
        if carrier not in CARRIERS:
            raise ValueError(f"unknown carrier {carrier!r}; the simulator plays {CARRIERS}")
        webhook = f"{self.webhook_base}/webhooks/{carrier}"
        call = SimCall(
            carrier=carrier,
            carrier_id=new_carrier_id(carrier),
            from_number=from_number,
            to=to,
            status=SimStatus.QUEUED,
            direction=direction,
            answer_url=webhook if carrier != "telnyx" else None,
            status_callback=webhook,
        )
        self.carriers.calls[call.carrier_id] = call
        return call

    def _created(self, call: SimCall) -> None:
        """A call created through a carrier's REST API (by voicecalld): play it."""
        scenario = self._plans.pop(call.to, None) or by_number(call.to, self.scenario)
        self._play(call, scenario)

    def _play(self, call: SimCall, scenario: Scenario) -> SimulatedCall:
        played = SimulatedCall(self.rig, call, self._dialects[call.carrier], scenario)
        self.calls.append(played)
        self._by_id[call.carrier_id] = played
        if call.request_id is not None:
            self._by_id[call.request_id] = played
        self._nursery.start_soon(played.play)
        return played


@asynccontextmanager
async def serve_simulator(
    webhook_base: str,
    *,
    accounts: SimAccounts | None = None,
    scenario: Scenario | None = None,
    audio: Audio | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    attempts: int = 3,
    keep_audio: bool = False,
    tally: Tally | None = None,
) -> AsyncIterator[Simulator]:
    """Run the simulator for the block: REST on ``host:port`` (port 0: any free one; see
    :attr:`Simulator.base_url`), webhooks to ``webhook_base`` (voicecalld's ``public_url``).

    ``attempts``: how often an undelivered webhook is tried; ``keep_audio``: keep the audio
    voicecalld sends on every stream (:attr:`~.media.MediaLeg.received`); ``tally``: count
    into this one (a fresh one by default; :attr:`Simulator.tally`).
    """
    tally = Tally() if tally is None else tally
    async with (
        httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as client,
        serve_fake_carriers(FakeCarriers(accounts), host=host, port=port) as carriers,
        trio.open_nursery() as nursery,
    ):
        pacer = Pacer()
        await nursery.start(pacer.run)
        rig = Rig(
            accounts=carriers.accounts,
            forger=SimAccounts(),
            sender=Sender(client, tally, attempts=attempts),
            pacer=pacer,
            audio=audio or Audio.tone(),
            tally=tally,
            keep_audio=keep_audio,
        )
        sim = Simulator(carriers, rig, nursery, webhook_base, scenario or Scenario())
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()
