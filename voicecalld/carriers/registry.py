"""The enabled carriers, by name, and the HTTP client they share.

One ``httpx.AsyncClient`` lives as long as the runtime (the ``carriers`` start-up step): its
connection pool is reused by every carrier, and a reload rebuilds the carrier objects (new
credentials, newly enabled carriers) on the same client, so requests in flight finish on the
objects that started them. The client never follows redirects: carrier requests go to
``api_base_url`` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import httpx
import trio

from voicecalld.carriers.base import Carrier, Instructions, WebhookEvent
from voicecalld.carriers.mock import MockCarrier
from voicecalld.carriers.plivo.carrier import PlivoCarrier
from voicecalld.carriers.telnyx.carrier import TelnyxCarrier
from voicecalld.carriers.twilio.carrier import TwilioCarrier
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import Config

__all__ = ["Carriers"]

REQUEST_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)

Deliver = Callable[[str, WebhookEvent], Awaitable[Instructions]]


class Carriers:
    def __init__(
        self, config: Config, client: httpx.AsyncClient, nursery: trio.Nursery, api_token: str
    ) -> None:
        self.client = client
        self._nursery = nursery
        self._api_token = api_token
        self._deliver: Deliver | None = None
        self._carriers: dict[str, Carrier] = {}
        self.reconfigure(config)

    @classmethod
    async def serve(
        cls, config: Config, api_token: str, *, task_status: trio.TaskStatus[Carriers]
    ) -> None:
        """The ``carriers`` start-up step: hold the shared client until the runtime ends."""
        async with (
            httpx.AsyncClient(follow_redirects=False, timeout=REQUEST_TIMEOUT) as client,
            trio.open_nursery() as nursery,
        ):
            task_status.started(cls(config, client, nursery, api_token))
            await trio.sleep_forever()

    def attach(self, deliver: Deliver) -> None:
        """Where carriers that push events themselves (the mock) deliver them: the manager."""
        self._deliver = deliver

    async def _deliver_event(self, provider: str, event: WebhookEvent) -> Instructions:
        assert self._deliver is not None, "attach() the manager first"
        return await self._deliver(provider, event)

    def reconfigure(self, config: Config, api_token: str | None = None) -> None:
        """Rebuild the carrier objects from ``config`` (SIGHUP)."""
        if api_token is not None:
            self._api_token = api_token
        urls = PublicUrls(config.server.public_url)
        providers = config.providers
        carriers: dict[str, Carrier] = {}
        if providers.mock.enabled:
            previous = self._carriers.get("mock")
            carriers["mock"] = (
                previous
                if isinstance(previous, MockCarrier)
                else MockCarrier(self._api_token, self._nursery, self._deliver_event)
            )
        if providers.twilio.enabled:
            carriers["twilio"] = TwilioCarrier(providers.twilio, urls, self.client, config.calls)
        if providers.plivo.enabled:
            carriers["plivo"] = PlivoCarrier(providers.plivo, urls, self.client, config.calls)
        if providers.telnyx.enabled:
            carriers["telnyx"] = TelnyxCarrier(providers.telnyx, urls, self.client, config.calls)
        self._carriers = carriers

    def get(self, name: str) -> Carrier | None:
        return self._carriers.get(name)

    def names(self) -> list[str]:
        return list(self._carriers)
