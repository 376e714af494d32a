"""The mock carrier: a whole call lifecycle with no account and no network.

A placed mock call rings after ``ring_after`` seconds and answers after ``answer_after``; the
manager then instructs it like any carrier: in notify mode the mock "speaks" the message (logged)
and completes when it would have finished; in conversation mode (no media: the mock opens no
stream) the callee talks for ``talk_for`` seconds and hangs up (``hangup-user``), unless
voicecalld hangs up or times the call out first. So ``voicecalld call +15551234567`` shows a
whole lifecycle, on timers, with no account. The callee's number picks an outcome, for demos
and tests: a number ending in ``486`` is busy, ``408`` never answers, ``503`` fails.

It also takes webhooks, so inbound calls and the inbound policy can be tried without a carrier:
``POST /webhooks/mock`` with a JSON body and ``X-Mock-Signature: hex(HMAC-SHA256(api token,
body))``; the body is ``{"event": "initiated|ringing|answered|ended|dtmf", "call_sid",
"direction"?, "from"?, "to"?, "reason"?, "digits"?, "call"?}`` and the answer is the manager's
instructions as JSON (``{"reply": "stream", "token": ...}``). Its media streams speak Twilio's
stream protocol on ``/media/mock``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import orjson
import trio

from voicecalld.calls.model import Call, Direction, EndReason
from voicecalld.carriers.base import (
    CarrierStatus,
    HttpReply,
    Instructions,
    MalformedWebhook,
    Reply,
    StreamProtocol,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.twilio.stream import TwilioStream

__all__ = ["MockCarrier", "MockTimings", "sign"]

log = logging.getLogger("voicecalld.carriers.mock")

SIGNATURE_HEADER: Final = "x-mock-signature"
_OUTCOMES: Final = {"486": EndReason.BUSY, "408": EndReason.NO_ANSWER, "503": EndReason.FAILED}
_KINDS: Final = {kind.value: kind for kind in WebhookKind}

Deliver = Callable[[str, WebhookEvent], Awaitable[Instructions]]


@attrs.frozen
class MockTimings:
    ring_after: float = 1.0
    answer_after: float = 2.0
    speech_chars_per_second: float = 15.0
    talk_for: float = 20.0
    """How long the callee of a conversation call talks before hanging up."""


def sign(secret: str, body: bytes) -> str:
    """The ``X-Mock-Signature`` of ``body``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class MockCarrier:
    name = "mock"
    webhook_methods = frozenset({"POST"})
    instructs_by_rest = False

    def __init__(
        self,
        secret: str,
        nursery: trio.Nursery,
        deliver: Deliver,
        timings: MockTimings = MockTimings(),
    ) -> None:
        self.stream: StreamProtocol = TwilioStream()
        self._secret = secret
        self._nursery = nursery
        self._deliver = deliver
        self._timings = timings
        self._live: dict[str, trio.CancelScope] = {}

    # -- webhooks --------------------------------------------------------------------------------

    def has_signature(self, headers: Mapping[str, str]) -> bool:
        return SIGNATURE_HEADER in headers

    def verify(self, request: WebhookRequest) -> bool:
        given = request.headers.get(SIGNATURE_HEADER, "")
        return hmac.compare_digest(given.encode(), sign(self._secret, request.body).encode())

    def replay_key(self, request: WebhookRequest) -> str:
        material = request.headers.get(SIGNATURE_HEADER, "").encode() + b"|" + request.body
        return hashlib.sha256(material).hexdigest()

    def parse(self, request: WebhookRequest) -> WebhookEvent:
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise MalformedWebhook("body is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedWebhook("body is not a JSON object")
        kind = _KINDS.get(str(data.get("event")))
        sid = data.get("call_sid")
        if kind is None or not isinstance(sid, str) or not sid:
            raise MalformedWebhook("event and call_sid are required")
        try:
            direction = Direction(data.get("direction", "inbound"))
            reason = EndReason(data["reason"]) if "reason" in data else None
        except ValueError as error:
            raise MalformedWebhook(str(error)) from None
        return WebhookEvent(
            kind=kind,
            provider_call_id=sid,
            call_id=_text(data.get("call")),
            direction=Direction.INBOUND
            if direction is Direction.INBOUND
            else Direction.OUTBOUND_API,
            from_number=_text(data.get("from")),
            to=_text(data.get("to")),
            end_reason=reason,
            digits=_text(data.get("digits")) or "",
            wants_instructions=kind in (WebhookKind.INITIATED, WebhookKind.ANSWERED),
        )

    def reply(self, event: WebhookEvent | None, instructions: Instructions) -> HttpReply:
        body: dict[str, Any] = {"reply": instructions.reply.value}
        if instructions.stream_token:
            body["token"] = instructions.stream_token
        if instructions.text:
            body["text"] = instructions.text
        return HttpReply(200, "application/json", orjson.dumps(body))

    # -- calls -----------------------------------------------------------------------------------

    async def place(self, call: Call) -> str:
        sid = "MK" + secrets.token_hex(16)
        scope = trio.CancelScope()
        self._live[sid] = scope
        self._nursery.start_soon(self._play, call, sid, scope)
        return sid

    async def _play(self, call: Call, sid: str, scope: trio.CancelScope) -> None:
        """Play the carrier's side of a placed call."""
        timings = self._timings
        outcome = _OUTCOMES.get(call.to[-3:])

        async def tell(kind: WebhookKind, **fields: Any) -> Instructions:
            event = WebhookEvent(kind=kind, provider_call_id=sid, call_id=call.id, **fields)
            return await self._deliver(self.name, event)

        with scope:
            try:
                await trio.sleep(timings.ring_after)
                if outcome is EndReason.FAILED:
                    await tell(WebhookKind.ENDED, end_reason=outcome)
                    return
                await tell(WebhookKind.RINGING)
                if outcome is EndReason.NO_ANSWER:
                    await trio.sleep_forever()  # voicecalld's ring timeout ends it
                await trio.sleep(timings.answer_after - timings.ring_after)
                if outcome is EndReason.BUSY:
                    await tell(WebhookKind.ENDED, end_reason=outcome)
                    return
                instructions = await tell(WebhookKind.ANSWERED, wants_instructions=True)
                if instructions.reply is Reply.SAY_AND_HANGUP:
                    log.info("mock says", extra={"call_id": call.id, "text": instructions.text})
                    await trio.sleep(1.0 + len(instructions.text) / timings.speech_chars_per_second)
                    await tell(WebhookKind.ENDED, end_reason=EndReason.COMPLETED)
                elif instructions.reply in (Reply.HANGUP, Reply.REJECT):
                    await tell(WebhookKind.ENDED, end_reason=EndReason.COMPLETED)
                else:
                    await trio.sleep(timings.talk_for)
                    await tell(WebhookKind.ENDED, end_reason=EndReason.HANGUP_USER)
            finally:
                self._live.pop(sid, None)

    async def hangup(self, call: Call) -> None:
        scope = self._live.pop(call.provider_call_id or "", None)
        if scope is not None:
            scope.cancel()

    async def status(self, call: Call) -> CarrierStatus:
        if call.provider_call_id in self._live:
            return CarrierStatus(live=True, answered=call.answered_at is not None)
        return CarrierStatus(live=False, end_reason=EndReason.COMPLETED)  # gone, like a 404

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        log.info("mock says", extra={"call_id": call.id, "text": text})

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None:
        log.info("mock sends DTMF", extra={"call_id": call.id, "digits": digits})

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
