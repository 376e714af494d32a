"""The enabled carriers, by name, and the HTTP client they share.

One ``httpx.AsyncClient`` lives as long as the runtime (the ``carriers`` start-up step): its
connection pool is reused by every carrier, and a reload rebuilds the carrier objects (new
credentials, newly enabled carriers) on the same client, so requests in flight finish on the
objects that started them. The client never follows redirects: carrier requests go to
``api_base_url`` and nowhere else.

The client, and each real carrier's modules, are made and imported only once a real carrier is
enabled: with the default config (the mock alone) they would be a sixth of start-up time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from voicecalld.carriers.base import Carrier, Instructions, WebhookEvent
from voicecalld.carriers.mock import MockCarrier
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import Config

if TYPE_CHECKING:
    import httpx

__all__ = ["Carriers"]

REQUEST_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

Deliver = Callable[[str, WebhookEvent], Awaitable[Instructions]]


class Carriers:
    def __init__(self, config: Config, nursery: trio.Nursery, api_token: str) -> None:
        self._client: httpx.AsyncClient | None = None
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
        async with trio.open_nursery() as nursery:
            carriers = cls(config, nursery, api_token)
            try:
                task_status.started(carriers)
                await trio.sleep_forever()
            finally:
                if carriers._client is not None:
                    with trio.CancelScope(shield=True):
                        await carriers._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared HTTP client, made when the first real carrier needs it."""
        if self._client is None:
            import httpx  # noqa: PLC0415 - see the module docstring

            timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=timeout)
        return self._client

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
        # imported when enabled (see the module docstring)
        if providers.twilio.enabled:
            from voicecalld.carriers.twilio.carrier import TwilioCarrier  # noqa: PLC0415

            carriers["twilio"] = TwilioCarrier(providers.twilio, urls, self.client, config.calls)
        if providers.plivo.enabled:
            from voicecalld.carriers.plivo.carrier import PlivoCarrier  # noqa: PLC0415

            carriers["plivo"] = PlivoCarrier(providers.plivo, urls, self.client, config.calls)
        if providers.telnyx.enabled:
            from voicecalld.carriers.telnyx.carrier import TelnyxCarrier  # noqa: PLC0415

            carriers["telnyx"] = TelnyxCarrier(providers.telnyx, urls, self.client, config.calls)
        self._carriers = carriers

    def get(self, name: str) -> Carrier | None:
        return self._carriers.get(name)

    def names(self) -> list[str]:
        return list(self._carriers)
