"""Twilio as a :class:`~voicecalld.carriers.base.Carrier`: the wire module, the REST client and
the stream protocol, composed.

What the manager relies on, and how Twilio gives it:

- **place**: ``Calls.json`` with the TwiML fetch (``Url``) and the status callback both at
  ``/webhooks/twilio?call=<id>`` (POST), subscribed to ``initiated``, ``ringing``,
  ``answered`` and ``completed`` (without ``StatusCallbackEvent`` Twilio sends only
  ``completed``); ``Timeout`` is the ring timeout and ``TimeLimit`` the max duration, rounded up
  to whole seconds.
- **hangup**: ``Status=completed`` for an answered call, ``Status=canceled`` for one that is not.
  Twilio ignores ``canceled`` on a call already in progress, so when the answer still says
  ``in-progress`` (answered while voicecalld did not know yet) the hang-up is sent again as
  ``completed``. A call Twilio says is gone (404/20404, or 21220: no longer in a state that can
  change) is hung up.
- **status**: the Call resource's ``status`` (busy stays busy); 404 is ended ``completed``.
- **speak / send_dtmf**: the call's TwiML is replaced by ``<Say>`` (or ``<Play digits>``) and a
  fresh ``<Connect><Stream>``: an update ends the running TwiML, so the stream has to be opened
  again, with the new token; it supersedes the old stream. Twilio caps inline TwiML at 4000
  characters.
- **instruct**: nothing; Twilio is driven by the TwiML of webhook answers.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Final

import httpx

from voicecalld.calls.model import Call, EndReason
from voicecalld.carriers.base import (
    CarrierError,
    CarrierStatus,
    HttpReply,
    Instructions,
    StreamProtocol,
    WebhookEvent,
    WebhookRequest,
)
from voicecalld.carriers.rest import DEFAULT_RETRY, DEFAULT_TIMEOUT, RetryPolicy
from voicecalld.carriers.twilio import wire
from voicecalld.carriers.twilio.rest import TwilioRest
from voicecalld.carriers.twilio.stream import TwilioStream
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import CallsConfig, TwilioConfig

__all__ = ["STATUS_EVENTS", "TWIML_LIMIT", "TwilioCarrier"]

STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
TWIML_LIMIT: Final = 4000
"""Twilio's limit on the ``Twiml`` parameter, in characters."""
_DIGITS: Final = re.compile(r"[0-9*#w]{1,128}")
"""What ``<Play digits>`` plays: DTMF digits, ``*``, ``#``, and ``w`` (half a second's pause)."""


class TwilioCarrier:
    name = "twilio"
    webhook_methods = frozenset({"POST"})
    instructs_by_rest = False

    def __init__(
        self,
        provider_config: TwilioConfig,
        urls: PublicUrls,
        client: httpx.AsyncClient,
        calls: CallsConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.stream: StreamProtocol = TwilioStream()
        self._auth_token = provider_config.auth_token
        self._urls = urls
        self._calls = calls
        self._rest = TwilioRest(provider_config, client, timeout=timeout, retry=retry)

    # -- webhooks (pure, delegated to the wire module) --------------------------------------------

    def has_signature(self, headers: Mapping[str, str]) -> bool:
        return wire.has_signature(headers)

    def verify(self, request: WebhookRequest) -> bool:
        return wire.verify(request, self._auth_token)

    def replay_key(self, request: WebhookRequest) -> str:
        return wire.replay_key(request)

    def parse(self, request: WebhookRequest) -> WebhookEvent:
        return wire.parse(request)

    def reply(self, event: WebhookEvent | None, instructions: Instructions) -> HttpReply:
        return wire.reply(event, instructions, self._urls.media(self.name))

    # -- REST --------------------------------------------------------------------------------------

    async def place(self, call: Call) -> str:
        callback = self._urls.webhook(self.name, call.id)
        form = [
            ("To", call.to),
            ("From", call.from_number),
            ("Url", callback),
            ("Method", "POST"),
            ("StatusCallback", callback),
            ("StatusCallbackMethod", "POST"),
            *(("StatusCallbackEvent", event) for event in STATUS_EVENTS),
            ("Timeout", str(math.ceil(self._calls.ring_timeout))),
            ("TimeLimit", str(math.ceil(self._calls.max_duration))),
        ]
        return await self._rest.create_call(form)

    async def hangup(self, call: Call) -> None:
        sid = call.provider_call_id
        if sid is None:
            return  # never reached Twilio: nothing to hang up
        if call.answered_at is not None:
            await self._rest.update_call(sid, [("Status", "completed")], idempotent=True)
            return
        updated = await self._rest.update_call(sid, [("Status", "canceled")], idempotent=True)
        if updated is not None and updated.get("status") == "in-progress":
            # answered meanwhile: Twilio ignores ``canceled`` on a call in progress
            await self._rest.update_call(sid, [("Status", "completed")], idempotent=True)

    async def status(self, call: Call) -> CarrierStatus:
        if call.provider_call_id is None:
            return CarrierStatus(live=False, end_reason=EndReason.LOST)
        resource = await self._rest.fetch_call(call.provider_call_id)
        if resource is None:
            return CarrierStatus(live=False, end_reason=EndReason.COMPLETED)
        status = resource.get("status")
        try:
            return wire.rest_status(status if isinstance(status, str) else "")
        except ValueError as error:
            raise CarrierError(f"twilio: {error}", retryable=True) from None

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        say = ET.Element("Say")
        say.text = text
        await self._redirect(call, say, stream_token)

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None:
        if not _DIGITS.fullmatch(digits):
            raise CarrierError(f"twilio: cannot play DTMF digits {digits!r:.40}", retryable=False)
        await self._redirect(call, ET.Element("Play", digits=digits), stream_token)

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        return None

    async def _redirect(self, call: Call, verb: ET.Element, stream_token: str | None) -> None:
        """Replace the call's TwiML with ``verb`` and a fresh stream (an update ends the old)."""
        if call.provider_call_id is None:
            raise CarrierError("twilio: the call has not reached Twilio yet", retryable=False)
        if not stream_token:
            raise CarrierError(
                "twilio: a new TwiML ends the running stream, so a fresh stream token is needed",
                retryable=False,
            )
        media_url = self._urls.media(self.name)
        twiml = wire.stream_after(verb, call.id, stream_token, media_url).body.decode("utf-8")
        if len(twiml) > TWIML_LIMIT:
            raise CarrierError(
                f"twilio: TwiML of {len(twiml)} characters is over Twilio's {TWIML_LIMIT}",
                retryable=False,
            )
        updated = await self._rest.update_call(
            call.provider_call_id, [("Twiml", twiml)], idempotent=False
        )
        if updated is None:
            raise CarrierError("twilio: the call is not in progress", retryable=False)
