"""Plivo as a :class:`~voicecalld.carriers.base.Carrier`: the wire module, the REST client and
the stream protocol, composed.

**Two ids.** Placing a call returns a *request* UUID; the CallUUID arrives with the call's first
webhook, which carries both. voicecalld stores the request UUID as ``provider_call_id`` until
then; the manager then moves it to ``metadata["request_id"]`` and keeps the CallUUID. So, for a
call voicecalld placed whose CallUUID it has not learned, the one id it holds is certainly the
request UUID and possibly also the CallUUID (Plivo may use one UUID for both); it is tried in
both roles. Inbound (and ``outbound-api``) calls have a CallUUID only.

What the manager relies on, and how Plivo gives it:

- **place**: ``POST Call/`` with ``answer_url``, ``ring_url`` and ``hangup_url`` all at
  ``/webhooks/plivo?call=<id>`` (POST; the wire module tells the callbacks apart by their
  fields), ``ring_timeout`` and ``time_limit`` in whole seconds (rounded up). Returns the
  request UUID.
- **hangup**: an unanswered call is canceled through ``DELETE Request/{request_uuid}/`` first,
  an answered one hung up through ``DELETE Call/{call_uuid}/`` first; when the first says 404
  the other is tried (the call may have been answered, or not, meanwhile). 404 from both: the
  call is gone, which is success.
- **status** (the 404 ambiguity, carriers.md §2.4): a 404 from the *live* lookup means only "not
  live now" (ended, unknown, or still queued), and a 404 from the *CDR* means "no record (yet)".
  So the live lookup comes first (CallUUID), then the queued one (request UUID), then the CDR
  (CallUUID, with its hang-up cause); only when all three say 404 is the call gone, read as
  ended ``completed`` (SPEC §7: a 404 is ``completed``). Two windows remain, both ending in a
  call that did end or will be ended: a call that ended a moment ago and has no CDR yet reads
  ``completed`` whatever its cause; a call known only by its request UUID that left the queue
  between two lookups reads gone, and its next webhook (which names our call) is answered with
  a hang-up.
- **speak / send_dtmf**: the Speak and DTMF APIs on the live call (CallUUID); the audio stream
  stays as it is, so no new token is needed. 404: the call is not live, an error.
- **instruct**: nothing; Plivo is driven by the XML of webhook answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

import httpx

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import (
    CarrierError,
    CarrierStatus,
    HttpReply,
    Instructions,
    StreamProtocol,
    WebhookEvent,
    WebhookRequest,
)
from voicecalld.carriers.plivo import wire
from voicecalld.carriers.plivo.rest import PlivoRest
from voicecalld.carriers.plivo.stream import PlivoStream
from voicecalld.carriers.rest import DEFAULT_RETRY, DEFAULT_TIMEOUT, RetryPolicy
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import CallsConfig, PlivoConfig

__all__ = ["SPEAK_LANGUAGE", "SPEAK_VOICE", "PlivoCarrier", "plivo_ids"]

SPEAK_VOICE: Final = "WOMAN"
SPEAK_LANGUAGE: Final = "en-US"
_DIGITS: Final = re.compile(r"[0-9*#wW]{1,128}")
"""What the DTMF API sends: digits, ``*``, ``#``; ``w`` and ``W`` pause 0.5 s and 1 s."""


def plivo_ids(call: Call) -> tuple[str | None, str | None]:
    """``(call_uuid, request_uuid)`` of ``call`` as far as voicecalld knows them.

    Before the CallUUID is learned, a placed call's one id fills both roles (see the module
    docstring); either may be ``None`` when that role has no id at all.
    """
    carrier_id = call.provider_call_id
    request_id = call.metadata.get("request_id")
    if isinstance(request_id, str):
        return carrier_id, request_id
    if call.direction is Direction.OUTBOUND:
        return carrier_id, carrier_id
    return carrier_id, None


class PlivoCarrier:
    name = "plivo"
    webhook_methods = frozenset({"POST", "GET"})
    instructs_by_rest = False

    def __init__(
        self,
        provider_config: PlivoConfig,
        urls: PublicUrls,
        client: httpx.AsyncClient,
        calls: CallsConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.stream: StreamProtocol = PlivoStream()
        self._auth_token = provider_config.auth_token
        self._urls = urls
        self._calls = calls
        self._rest = PlivoRest(provider_config, client, timeout=timeout, retry=retry)

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
        return await self._rest.create_call(
            {
                "from": call.from_number,
                "to": call.to,
                "answer_url": callback,
                "answer_method": "POST",
                "ring_url": callback,
                "ring_method": "POST",
                "hangup_url": callback,
                "hangup_method": "POST",
                "ring_timeout": math.ceil(self._calls.ring_timeout),
                "time_limit": math.ceil(self._calls.max_duration),
            }
        )

    async def hangup(self, call: Call) -> None:
        call_uuid, request_uuid = plivo_ids(call)
        cancel = (self._rest.cancel_request, request_uuid)
        hang_up = (self._rest.hangup_call, call_uuid)
        order = (hang_up, cancel) if call.answered_at is not None else (cancel, hang_up)
        for action, uuid in order:
            if uuid is not None and await action(uuid):
                return
        # 404 from every endpoint: Plivo has no such live or queued call, it is gone

    async def status(self, call: Call) -> CarrierStatus:
        call_uuid, request_uuid = plivo_ids(call)
        if call_uuid is None and request_uuid is None:
            return CarrierStatus(live=False, end_reason=EndReason.LOST)
        if call_uuid is not None:
            live = await self._rest.live_call(call_uuid)
            if live is not None:
                return _live(live)
        if request_uuid is not None:
            queued = await self._rest.queued_call(request_uuid)
            if queued is not None:
                return _live(queued)
        if call_uuid is not None:
            record = await self._rest.call_record(call_uuid)
            if record is not None:
                return wire.cdr_status(record)
        return CarrierStatus(live=False, end_reason=EndReason.COMPLETED)

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        call_uuid = self._live_uuid(call)
        body = {"text": text, "voice": SPEAK_VOICE, "language": SPEAK_LANGUAGE}
        if not await self._rest.speak(call_uuid, body):
            raise CarrierError("plivo: the call is not live", retryable=False, status=404)

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None:
        if not _DIGITS.fullmatch(digits):
            raise CarrierError(f"plivo: cannot send DTMF digits {digits!r:.40}", retryable=False)
        if not await self._rest.send_digits(self._live_uuid(call), digits):
            raise CarrierError("plivo: the call is not live", retryable=False, status=404)

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        return None

    @staticmethod
    def _live_uuid(call: Call) -> str:
        call_uuid, _ = plivo_ids(call)
        if call_uuid is None:
            raise CarrierError("plivo: the call has not reached Plivo yet", retryable=False)
        return call_uuid


def _live(record: Mapping[str, object]) -> CarrierStatus:
    """A live or queued lookup's record; an undocumented status is a retryable error."""
    try:
        return wire.live_status(record)
    except ValueError as error:
        raise CarrierError(f"plivo: {error}", retryable=True) from None
