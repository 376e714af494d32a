"""The Carrier protocol, and the carrier-neutral values that cross it.

A carrier has three halves, each replaceable in tests:

- the **webhook** half is pure (sans-I/O): check that signature headers are present, verify a
  :class:`WebhookRequest`, derive its replay key, parse it into a :class:`WebhookEvent`, and turn
  the manager's :class:`Instructions` into the :class:`HttpReply` the carrier expects;
- the **REST** half talks to ``api_base_url`` through an ``httpx.AsyncClient`` given from outside;
- the **stream** half (:class:`StreamProtocol`) reads and writes the carrier's media-stream
  messages, also pure.

Nothing here imports trio: the manager decides, the carriers translate.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

import attrs

from voicecalld.calls.model import Call, Direction, EndReason

__all__ = [
    "Carrier",
    "CarrierError",
    "CarrierStatus",
    "HttpReply",
    "Instructions",
    "MalformedWebhook",
    "Reply",
    "StreamAudio",
    "StreamDtmf",
    "StreamEvent",
    "StreamIgnored",
    "StreamMark",
    "StreamProtocol",
    "StreamStarted",
    "StreamStopped",
    "WebhookEvent",
    "WebhookKind",
    "WebhookRequest",
]


# -- webhooks ----------------------------------------------------------------------------------


@attrs.frozen
class WebhookRequest:
    """A webhook as received, before anything is believed.

    ``url`` is what the carrier signed: ``server.public_url`` + route path + the request's query
    (never derived from the Host header). ``headers`` have lower-case names; a repeated header
    is joined with ``,``. ``received_at`` is Unix time, for timestamped schemes (Telnyx).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float
    memo: dict[str, object] = attrs.field(factory=dict, eq=False, repr=False)
    """Values a carrier derives from the request once (the decoded body and query), shared by
    verify, replay_key and parse: see :func:`voicecalld.carriers.forms.body_fields`."""


class MalformedWebhook(ValueError):
    """A verified webhook whose content cannot be understood: answered 400."""


class WebhookKind(StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    DTMF = "dtmf"
    MACHINE = "machine"
    """Answering-machine detection: ``machine`` says whether a machine answered."""
    SPOKEN = "spoken"
    """Speech voicecalld asked for has finished playing (Telnyx ``call.speak.ended``)."""
    OTHER = "other"
    """Understood, verified, but nothing to act on (streaming.started, bridged, ...)."""


@attrs.frozen
class WebhookEvent:
    """One carrier callback in voicecalld's terms.

    ``call_id`` is voicecalld's own id when the carrier echoed it back (the ``call`` query
    parameter of the callback URL voicecalld gave it, or Telnyx ``client_state``): the surest way
    to tell our outbound calls from ``outbound-api`` ones. ``direction`` is the carrier's claim,
    normalized: ``inbound``, or ``outbound-api`` for any outbound leg (voicecalld decides whether
    it placed the call itself). ``wants_instructions`` is true when the carrier waits for the
    HTTP answer to tell it what to do (Twilio TwiML fetch, Plivo answer_url).
    """

    kind: WebhookKind
    provider_call_id: str
    call_id: str | None = None
    direction: Direction | None = None
    from_number: str | None = None
    to: str | None = None
    end_reason: EndReason | None = None
    digits: str = ""
    machine: bool = False
    wants_instructions: bool = False
    request_id: str | None = None
    """A carrier's id for the *request* that placed the call (Plivo ``RequestUUID``)."""
    sequence: int | None = None
    """Carrier ordering hint (Twilio ``SequenceNumber``); events may arrive out of order."""


class Reply(StrEnum):
    ACK = "ack"
    """Nothing to instruct: a status callback, or a carrier that ignores the body."""
    STREAM = "stream"
    """Connect the call's media stream to ``/media/{provider}`` with ``stream_token``."""
    SAY_AND_HANGUP = "say-and-hangup"
    """Notify mode: speak ``text``, then hang up."""
    HANGUP = "hangup"
    REJECT = "reject"


@attrs.frozen
class Instructions:
    """What the manager wants the carrier told in a webhook answer (or its REST equivalent)."""

    reply: Reply
    call_id: str | None = None
    stream_token: str | None = None
    text: str = ""


@attrs.frozen
class HttpReply:
    status: int
    content_type: str
    body: bytes


# -- REST --------------------------------------------------------------------------------------


class CarrierError(Exception):
    """A carrier request that failed.

    ``retryable`` is true for network errors, timeouts and 5xx (ask again later); false when
    the carrier refused the request (4xx other than "already gone").
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@attrs.frozen
class CarrierStatus:
    """The carrier's word on a call, for reconciliation (SPEC §7)."""

    live: bool
    answered: bool | None = None
    """Whether the carrier says the call was answered; ``None`` when it does not say (Telnyx)."""
    ringing: bool = False
    """Whether the carrier says the callee's phone is ringing (live, not answered yet)."""
    end_reason: EndReason | None = None
    """Set when not live: the carrier's real reason (busy stays busy; 404 → completed)."""


# -- media streams -----------------------------------------------------------------------------


@attrs.frozen
class StreamStarted:
    token: str
    provider_call_id: str
    stream_id: str
    encoding: str
    """``mulaw``, ``alaw`` or ``pcm16`` (little-endian after decoding)."""
    sample_rate: int


@attrs.frozen
class StreamAudio:
    audio: bytes
    """Raw audio in the stream's encoding (base64 already decoded)."""


@attrs.frozen
class StreamDtmf:
    digit: str


@attrs.frozen
class StreamMark:
    name: str


@attrs.frozen
class StreamStopped:
    pass


@attrs.frozen
class StreamIgnored:
    """A message that needs no action (``connected``, errors the carrier reports, unknown)."""

    event: str


StreamEvent = StreamStarted | StreamAudio | StreamDtmf | StreamMark | StreamStopped | StreamIgnored


class StreamProtocol(Protocol):
    """A carrier's media-stream messages, read and written (sans-I/O, on the hot path)."""

    def parse(self, message: bytes) -> StreamEvent:
        """Read one text message (UTF-8 JSON); raises ``ValueError`` when it is malformed."""
        ...

    def media(self, stream_id: str, audio: bytes) -> bytes:
        """A message that plays ``audio`` to the caller: μ-law at 8 kHz, which every carrier
        plays whatever the encoding of the audio it streams to us (Plivo L16, Telnyx PCMA)."""
        ...

    def mark(self, stream_id: str, name: str) -> bytes: ...

    def clear(self, stream_id: str) -> bytes: ...


# -- the carrier -------------------------------------------------------------------------------


class Carrier(Protocol):
    """Everything voicecalld needs of a carrier. Implemented by twilio, plivo, telnyx and mock."""

    name: str
    webhook_methods: frozenset[str]
    stream: StreamProtocol
    instructs_by_rest: bool
    """True when the carrier ignores webhook answers and is driven by REST (Telnyx)."""

    # webhook half (pure)
    def has_signature(self, headers: Mapping[str, str]) -> bool:
        """Whether the signature headers are present (decided before the body is read: 401)."""
        ...

    def verify(self, request: WebhookRequest) -> bool: ...

    def replay_key(self, request: WebhookRequest) -> str:
        """A key from authenticated material only: the same delivery always gives the same key."""
        ...

    def parse(self, request: WebhookRequest) -> WebhookEvent:
        """Raises :class:`MalformedWebhook` for a verified request that cannot be understood."""
        ...

    def reply(self, event: WebhookEvent | None, instructions: Instructions) -> HttpReply:
        """The HTTP answer to a webhook (``event`` is ``None`` for a replay)."""
        ...

    # REST half
    async def place(self, call: Call) -> str:
        """Dial ``call`` (its record is already durable); return the carrier's call id."""
        ...

    async def hangup(self, call: Call) -> None:
        """End the call at the carrier; a call the carrier says is already gone is success."""
        ...

    async def status(self, call: Call) -> CarrierStatus: ...

    async def speak(self, call: Call, text: str, stream_token: str | None) -> None:
        """Say ``text`` on a live call; carriers that must re-open the stream get a fresh token."""
        ...

    async def send_dtmf(self, call: Call, digits: str, stream_token: str | None) -> None: ...

    async def instruct(self, call: Call, instructions: Instructions) -> None:
        """Act on instructions through REST, for carriers that ignore webhook answers (Telnyx:
        answer with streaming, hang up, reject); a no-op for the others."""
        ...
