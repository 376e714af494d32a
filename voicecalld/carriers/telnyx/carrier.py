"""Telnyx as a :class:`~voicecalld.carriers.base.Carrier`: the wire module, the REST client and
the stream protocol, composed.

Telnyx ignores webhook answers (``instructs_by_rest``): every decision reaches the call as a
Call Control command, each with a fresh ``command_id`` so that retrying it is safe.

What the manager relies on, and how Telnyx gives it:

- **place**: ``POST /v2/calls`` on the configured ``connection_id``, with ``webhook_url`` at
  ``/webhooks/telnyx?call=<id>`` and voicecalld's call id in ``client_state`` (which Telnyx
  echoes on every webhook; the URL is not signed, so only ``client_state`` is trusted);
  ``timeout_secs`` is the ring timeout (Telnyx takes 5..600) and ``time_limit_secs`` the max
  duration (Telnyx allows at most 14400), in whole seconds rounded up.
- **instruct**: ``STREAM`` answers an inbound call that is not answered yet with the stream
  fields (``actions/answer``), and starts the stream of any other call
  (``actions/streaming_start``): ``stream_url`` is ``/media/telnyx``, the inbound track,
  bidirectional RTP in PCMU. The stream token travels where :class:`TelnyxStream` reads it:
  in ``client_state`` (``call=<id>&token=<token>``, echoed on the stream's ``start``), and, for
  ``streaming_start``, also as the ``token`` custom parameter. ``SAY_AND_HANGUP`` answers if
  needed, then ``actions/speak``: Telnyx reports ``call.speak.ended`` and the manager hangs up.
  ``HANGUP`` is ``actions/hangup``; ``REJECT`` is ``actions/reject`` (``CALL_REJECTED``).
- **hangup**: ``actions/hangup``; 404 or 422/``90018`` (already ended) is success.
- **status**: ``GET /v2/calls/{id}``'s ``is_alive``; gone (404/422) is ended ``completed``.
  Telnyx does not say whether a live call was answered (``answered`` is ``None``).
- **speak / send_dtmf**: ``actions/speak`` (voice ``female``, ``en-US``) and
  ``actions/send_dtmf``; the media stream stays up, so no new token is needed.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Mapping
from typing import Final

import httpx

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import (
    CarrierError,
    CarrierStatus,
    HttpReply,
    Instructions,
    Reply,
    StreamProtocol,
    WebhookEvent,
    WebhookRequest,
)
from voicecalld.carriers.rest import DEFAULT_RETRY, DEFAULT_TIMEOUT, RetryPolicy
from voicecalld.carriers.telnyx import wire
from voicecalld.carriers.telnyx.rest import TelnyxRest
from voicecalld.carriers.telnyx.stream import TelnyxStream
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import CallsConfig, TelnyxConfig

__all__ = ["SPEAK_LANGUAGE", "SPEAK_VOICE", "STREAM_FIELDS", "TelnyxCarrier"]

log = logging.getLogger("voicecalld.carriers.telnyx")

SPEAK_VOICE: Final = "female"
SPEAK_LANGUAGE: Final = "en-US"
STREAM_FIELDS: Final = {
    "stream_track": "inbound_track",
    "stream_codec": "PCMU",
    "stream_bidirectional_mode": "rtp",
    "stream_bidirectional_codec": "PCMU",
}
"""The media stream voicecalld asks for: what the caller says, μ-law both ways, in real time
(the default bidirectional mode, ``mp3``, queues whole files at one a second)."""
_RING_SECONDS: Final = (5, 600)
_MAX_TIME_LIMIT: Final = 14400
_DIGITS: Final = re.compile(r"[0-9A-D*#wW]{1,128}")
"""What ``send_dtmf`` sends: digits, ``A``-``D``, ``*``, ``#``; ``w``/``W`` pause 0.5 s/1 s."""


class TelnyxCarrier:
    name = "telnyx"
    webhook_methods = frozenset({"POST"})
    instructs_by_rest = True

    def __init__(
        self,
        provider_config: TelnyxConfig,
        urls: PublicUrls,
        client: httpx.AsyncClient,
        calls: CallsConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.stream: StreamProtocol = TelnyxStream()
        try:
            self._public_key = wire.load_public_key(provider_config.public_key)
        except ValueError as error:
            # fail closed: without a key no webhook verifies (403), and the operator is told why
            log.error(
                "providers.telnyx.public_key is unusable; every Telnyx webhook will be refused",
                extra={"error": str(error)},
            )
            self._public_key = b""
        self._connection_id = provider_config.connection_id
        self._urls = urls
        self._calls = calls
        self._rest = TelnyxRest(provider_config, client, timeout=timeout, retry=retry)

    # -- webhooks (pure, delegated to the wire module) --------------------------------------------

    def has_signature(self, headers: Mapping[str, str]) -> bool:
        return wire.has_signature(headers)

    def verify(self, request: WebhookRequest) -> bool:
        return wire.verify(request, self._public_key)

    def replay_key(self, request: WebhookRequest) -> str:
        return wire.replay_key(request)

    def parse(self, request: WebhookRequest) -> WebhookEvent:
        return wire.parse(request)

    def reply(self, event: WebhookEvent | None, instructions: Instructions) -> HttpReply:
        return wire.reply(event, instructions, self._urls.media(self.name))

    # -- REST --------------------------------------------------------------------------------------

    async def place(self, call: Call) -> str:
        low, high = _RING_SECONDS
        return await self._rest.dial(
            {
                "connection_id": self._connection_id,
                "from": call.from_number,
                "to": call.to,
                "webhook_url": self._urls.webhook(self.name, call.id),
                "client_state": wire.encode_client_state(call.id),
                "command_id": _command_id(),
                "timeout_secs": min(high, max(low, math.ceil(self._calls.ring_timeout))),
                "time_limit_secs": min(_MAX_TIME_LIMIT, math.ceil(self._calls.max_duration)),
            }
        )

    async def hangup(self, call: Call) -> None:
        if call.provider_call_id is not None:
            await self._command(call.provider_call_id, "hangup", {})  # gone is hung up

    async def status(self, call: Call) -> CarrierStatus:
        if call.provider_call_id is None:
            return CarrierStatus(live=False, end_reason=EndReason.LOST)
        data = await self._rest.fetch(call.provider_call_id)
        if data is None:
            return CarrierStatus(live=False, end_reason=EndReason.COMPLETED)
        try:
            return wire.rest_status(data)
        except ValueError as error:
            raise CarrierError(f"telnyx: {error}", retryable=True) from None

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        await self._live_command(call, "speak", self._speech(call, text))

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None:
        if not _DIGITS.fullmatch(digits):
            raise CarrierError(f"telnyx: cannot send DTMF digits {digits!r:.40}", retryable=False)
        await self._live_command(call, "send_dtmf", {"digits": digits})

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        reply = instructions.reply
        unanswered_inbound = call.direction is Direction.INBOUND and call.answered_at is None
        if reply is Reply.STREAM:
            token = instructions.stream_token
            if not token:
                raise CarrierError("telnyx: a stream needs a stream token", retryable=False)
            stream = {
                "client_state": wire.encode_client_state(call.id, token),
                "stream_url": self._urls.media(self.name),
                **STREAM_FIELDS,
            }
            if unanswered_inbound:
                await self._live_command(call, "answer", stream)
            else:
                parameters = [{"name": "token", "value": token}]
                await self._live_command(
                    call, "streaming_start", {**stream, "custom_parameters": parameters}
                )
        elif reply is Reply.SAY_AND_HANGUP:
            if unanswered_inbound:
                state = {"client_state": wire.encode_client_state(call.id)}
                await self._live_command(call, "answer", state)
            await self._live_command(call, "speak", self._speech(call, instructions.text))
        elif reply is Reply.HANGUP:
            await self.hangup(call)
        elif reply is Reply.REJECT and call.provider_call_id is not None:
            await self._command(call.provider_call_id, "reject", {"cause": "CALL_REJECTED"})

    def _speech(self, call: Call, text: str) -> dict[str, object]:
        return {
            "payload": text,
            "voice": SPEAK_VOICE,
            "language": SPEAK_LANGUAGE,
            "client_state": wire.encode_client_state(call.id),
        }

    async def _live_command(self, call: Call, action: str, body: Mapping[str, object]) -> None:
        """A command that needs the call up: a call that is gone is an error here."""
        if call.provider_call_id is None:
            raise CarrierError("telnyx: the call has not reached Telnyx yet", retryable=False)
        if not await self._command(call.provider_call_id, action, body):
            raise CarrierError(
                f"telnyx: {action}: the call has already ended", retryable=False, status=422
            )

    async def _command(self, call_control_id: str, action: str, body: Mapping[str, object]) -> bool:
        return await self._rest.action(
            call_control_id, action, {**body, "command_id": _command_id()}
        )


def _command_id() -> str:
    """A fresh idempotency key: one per command, the same across its retries."""
    return str(uuid.uuid4())
