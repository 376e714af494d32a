"""How a simulated carrier talks during a call: the values its three halves exchange (pure).

A carrier's *voice dialect* (:mod:`.twilio_voice`, :mod:`.plivo_voice`, :mod:`.telnyx_voice`)
says, in the carrier's real formats:

- which **webhooks** it sends when something happens to a call (:class:`Happening`), unsigned
  (:class:`Webhook`), and how it **signs** them (:class:`Delivery`: the exact bytes and
  headers). Signing is separate so a fault can sign with the wrong credentials (a forgery) or
  send the same bytes twice (a replay);
- how it **reads instructions**: a webhook answer (TwiML, Plivo XML) is a program of
  :data:`Verb` s run in order; a REST action (Telnyx commands, a Twilio TwiML update, a Plivo
  hang-up) is a :data:`Directive`;
- what a **media stream** says (:class:`StreamMessages`): the opening messages, audio frames,
  DTMF, mark echoes, the stop; and what it makes of voicecalld's messages (:class:`Heard`).

The player (:mod:`.player`) runs a call's life from these; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

import attrs

from voicecalld.sim.state import SimAccounts, SimCall

__all__ = [
    "Answer",
    "Context",
    "Delivery",
    "Dialect",
    "Digits",
    "Directive",
    "Hangup",
    "Happening",
    "Heard",
    "Pause",
    "Redirect",
    "Say",
    "StartStream",
    "StopStream",
    "Stream",
    "StreamMessages",
    "StreamOrder",
    "Verb",
    "Webhook",
]


class Happening(StrEnum):
    """Something that happened to a call, that a carrier may tell voicecalld about."""

    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    """The callee answered (a status callback; Telnyx ``call.answered``)."""
    FETCH = "fetch"
    """The carrier asks what to do (Twilio TwiML fetch, Plivo ``answer_url``)."""
    ENDED = "ended"
    STREAM_STARTED = "stream-started"
    STREAM_STOPPED = "stream-stopped"
    SPEAK_STARTED = "speak-started"
    SPEAK_ENDED = "speak-ended"
    DTMF = "dtmf"


@attrs.frozen
class Context:
    """What a webhook says beyond the call record: when, in what order, why it ended."""

    now: float
    """Unix time of the happening."""
    sequence: int = 0
    """Twilio ``SequenceNumber``: the call's status callbacks counted from 0."""
    duration: int = 0
    """Seconds the call was answered (on ``ENDED``)."""
    hung_up_by: str = "callee"
    """``callee``, ``caller`` or ``carrier``: who ended the call (on ``ENDED``)."""
    digit: str = ""
    stream_id: str = ""
    stream_url: str = ""
    attempt: int = 1
    """Telnyx ``meta.attempt``: a redelivery counts up."""


@attrs.frozen
class Webhook:
    """One request a carrier makes to voicecalld, before signing."""

    label: str
    """What it is, for the tallies: ``initiated``, ``fetch``, ``call.hangup``, ..."""
    method: str
    url: str
    form: tuple[tuple[str, str], ...] = ()
    """Form fields, in the order the carrier sends them (Twilio, Plivo)."""
    json: bytes = b""
    """The raw JSON body (Telnyx)."""
    wants_answer: bool = False
    """Whether the carrier acts on the answer's body (TwiML fetch, Plivo ``answer_url``)."""


@attrs.frozen
class Delivery:
    """A signed webhook: the exact request that goes on the wire."""

    webhook: Webhook
    headers: tuple[tuple[str, str], ...]
    body: bytes


# -- instructions ------------------------------------------------------------------------------


@attrs.frozen
class StreamOrder:
    """A media stream the carrier was told to open, and how."""

    url: str
    encoding: str = "mulaw"
    """Of the audio the carrier sends: ``mulaw``, ``alaw`` or ``pcm16`` (little-endian)."""
    sample_rate: int = 8000
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    """Twilio ``<Parameter>``s, Telnyx ``custom_parameters``."""
    extra_headers: str = ""
    """Plivo ``extraHeaders``, echoed on ``start``."""
    client_state: str | None = None
    """Telnyx ``client_state`` of the command that started the stream, echoed on ``start``."""
    auth_token: str | None = None
    """Telnyx ``stream_auth_token``, echoed on ``connected``."""
    bidirectional: bool = True
    """Whether the carrier plays audio voicecalld sends back."""
    blocking: bool = True
    """Whether the instructions wait for the stream to end before going on (Twilio
    ``<Connect>``, Plivo ``keepCallAlive="true"``), or go on at once (``<Start>``)."""


@attrs.frozen
class Say:
    """Speak ``text`` to the callee (TwiML ``<Say>``, Plivo ``<Speak>``, Telnyx ``speak``)."""

    text: str


@attrs.frozen
class Digits:
    """Play DTMF tones (TwiML ``<Play digits>``)."""

    digits: str


@attrs.frozen
class Pause:
    seconds: float


@attrs.frozen
class Stream:
    order: StreamOrder


@attrs.frozen
class Hangup:
    """End the call (``rejected``: refuse it unanswered, TwiML ``<Reject>``)."""

    rejected: bool = False


Verb = Say | Digits | Pause | Stream | Hangup
"""One step of a webhook answer's program."""


@attrs.frozen
class Answer:
    """Telnyx ``actions/answer``, maybe with a stream."""

    stream: StreamOrder | None = None


@attrs.frozen
class StartStream:
    order: StreamOrder


@attrs.frozen
class StopStream:
    pass


@attrs.frozen
class Redirect:
    """New instructions replace the running ones (a Twilio update with ``Twiml`` or ``Url``)."""

    verbs: tuple[Verb, ...] = ()
    url: str | None = None
    """Fetch the new instructions from here (``Url``) instead."""


Directive = Answer | StartStream | StopStream | Redirect | Say | Hangup
"""What a REST action asks of the call (the REST half has already changed its status)."""


# -- media streams -----------------------------------------------------------------------------


@attrs.frozen
class Heard:
    """What the carrier makes of one message voicecalld sent on the media stream."""

    kind: str
    """``media``, ``mark`` (a checkpoint to echo once played), ``clear``, or ``invalid``."""
    audio: bytes = b""
    name: str = ""


class StreamMessages(Protocol):
    """One media stream's messages, as the carrier writes and reads them.

    Made per stream (:meth:`Dialect.stream`): it numbers its own messages and remembers what
    the carrier echoes on every frame.
    """

    def opening(self) -> list[bytes]:
        """The messages that open the stream (``connected``, ``start``)."""
        ...

    def media(self, chunk: int, millis: int, epoch_millis: int, payload: str) -> bytes:
        """One audio frame: ``payload`` is base64, ``chunk`` counts frames from 1, ``millis``
        is the frame's time since the stream began and ``epoch_millis`` its Unix time."""
        ...

    def dtmf(self, digit: str) -> bytes: ...

    def played(self, name: str) -> bytes:
        """The echo of a mark (checkpoint) once the audio queued before it has played."""
        ...

    def cleared(self) -> bytes | None:
        """What the carrier says after a clear, if anything (Plivo ``clearedAudio``)."""
        ...

    def stop(self) -> bytes | None:
        """The last message before the carrier closes the stream (Plivo sends none)."""
        ...

    def read(self, message: bytes) -> Heard:
        """A text message from voicecalld; anything the carrier would reject is ``invalid``."""
        ...


class Dialect(Protocol):
    """One simulated carrier's voice side."""

    name: str
    instructs_by_answer: bool
    """Twilio and Plivo run the program of a webhook answer; Telnyx waits for REST commands."""

    def webhooks(self, call: SimCall, happening: Happening, context: Context) -> list[Webhook]:
        """What the carrier sends when ``happening`` happens (often one request, maybe none)."""
        ...

    def sign(self, webhook: Webhook, accounts: SimAccounts, now: float) -> Delivery: ...

    def read_answer(self, body: bytes) -> tuple[Verb, ...]:
        """The program in a webhook answer; ``ValueError`` for what the carrier cannot run."""
        ...

    def directive(self, call: SimCall, name: str, fields: Mapping[str, object]) -> Directive | None:
        """What a recorded REST action asks of the call (``None``: nothing the player does)."""
        ...

    def redelivery(self, webhook: Webhook, attempt: int) -> Webhook:
        """``webhook`` as the carrier sends it again, on its ``attempt``-th try."""
        ...

    def stream(self, call: SimCall, order: StreamOrder, stream_id: str) -> StreamMessages:
        """The messages of a new media stream for ``call``."""
        ...

    def upgrade_headers(self, order: StreamOrder, accounts: SimAccounts) -> list[tuple[str, str]]:
        """Headers of the websocket upgrade request that opens a media stream."""
        ...

    def new_stream_id(self) -> str:
        """A stream id in the carrier's format (Twilio ``MZ...``, a UUID for the others)."""
        ...
