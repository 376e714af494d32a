"""The simulated Twilio's voice side: its webhooks, its TwiML reader, its Media Streams (pure).

As Twilio does it (carriers.md §1):

- **Webhooks** are form-encoded POSTs signed with ``X-Twilio-Signature`` (HMAC-SHA1 with the
  Auth Token over the exact URL and the sorted fields). The TwiML fetch (the call's ``Url``,
  or for an inbound call the number's voice URL) carries no ``CallbackSource``; a status
  callback carries ``CallbackSource=call-progress-events``, a ``SequenceNumber`` counted per
  call from 0 and a ``Timestamp``, and goes out only for the events the call subscribed to
  (``StatusCallbackEvent``) — except the final status, which is always sent. Calls created
  through the API say ``Direction=outbound-api`` whoever created them.
- **TwiML** runs verb by verb: ``<Say>``, ``<Play digits>``, ``<Pause>``, ``<Connect><Stream>``
  (bidirectional, and blocking: the next verb runs once the websocket closes), ``<Start><Stream>``
  (one-way, goes on at once), ``<Hangup>``, ``<Reject>``; the call ends when the document does.
  Anything else is an application error (``ValueError``), as is a document that is not TwiML.
- **Media Streams** send text JSON only, with ``sequenceNumber``, ``chunk`` and ``timestamp``
  as strings, μ-law 8 kHz audio, the ``<Parameter>``s in ``start.customParameters``; Twilio
  reads ``media``, ``mark`` and ``clear`` with the stream's own ``streamSid`` and calls
  anything else invalid (its errors 31950/31951).
"""

from __future__ import annotations

import binascii
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from voicecalld.carriers.twilio.wire import SIGNATURE_HEADER, signature
from voicecalld.sim.dialect import (
    Context,
    Delivery,
    Digits,
    Directive,
    Hangup,
    Happening,
    Heard,
    Pause,
    Redirect,
    Say,
    Stream,
    StreamOrder,
    Verb,
    Webhook,
)
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus
from voicecalld.sim.twilio_api import API_VERSION

__all__ = ["TwilioMedia", "TwilioVoice", "read_twiml"]

_STATUS_EVENTS: Final = {
    Happening.INITIATED: ("initiated", "initiated"),
    Happening.RINGING: ("ringing", "ringing"),
    Happening.ANSWERED: ("answered", "in-progress"),
}
"""Happening → (``StatusCallbackEvent`` that subscribes to it, ``CallStatus`` posted)."""
_SIP_RESPONSES: Final = {SimStatus.BUSY: "486", SimStatus.FAILED: "503"}
_INVALID: Final = Heard("invalid")


class TwilioVoice:
    name = "twilio"
    instructs_by_answer = True

    def __init__(self, accounts: SimAccounts) -> None:
        self.accounts = accounts

    def redelivery(self, webhook: Webhook, attempt: int) -> Webhook:
        return webhook  # the same request: the same signature

    def upgrade_headers(self, order: StreamOrder, accounts: SimAccounts) -> list[tuple[str, str]]:
        """Twilio signs the upgrade over the stream URL, with no parameters."""
        return [(SIGNATURE_HEADER, signature(accounts.twilio_auth_token, order.url, {}))]

    def stream(self, call: SimCall, order: StreamOrder, stream_id: str) -> TwilioMedia:
        return TwilioMedia(self.accounts.twilio_account_sid, call, order, stream_id)

    def new_stream_id(self) -> str:
        return "MZ" + secrets.token_hex(16)

    def webhooks(self, call: SimCall, happening: Happening, context: Context) -> list[Webhook]:
        if happening is Happening.FETCH:
            if not call.answer_url:
                return []
            status = "in-progress" if call.answered else "ringing"
            fields = [*self._fields(call, status), *_geo(call)]
            return [Webhook("fetch", "POST", call.answer_url, tuple(fields), wants_answer=True)]
        if not call.status_callback:
            return []
        if happening is Happening.ENDED:
            status = call.status.value
            extra = [("CallDuration", str(context.duration))]
            if call.status in _SIP_RESPONSES:
                extra.append(("SipResponseCode", _SIP_RESPONSES[call.status]))
            label = status
        elif happening in _STATUS_EVENTS:
            event, status = _STATUS_EVENTS[happening]
            if event not in call.status_events:
                return []  # not subscribed: Twilio stays silent
            extra, label = [], event
        else:
            return []  # streams, speech, DTMF: nothing Twilio posts for these
        fields = [
            *self._fields(call, status),
            *extra,
            ("Timestamp", format_datetime(datetime.fromtimestamp(context.now, UTC))),
            ("CallbackSource", "call-progress-events"),
            ("SequenceNumber", str(context.sequence)),
        ]
        return [Webhook(label, "POST", call.status_callback, tuple(fields))]

    def _fields(self, call: SimCall, status: str) -> list[tuple[str, str]]:
        return [
            ("AccountSid", self.accounts.twilio_account_sid),
            ("ApiVersion", API_VERSION),
            ("CallSid", call.carrier_id),
            ("CallStatus", status),
            ("Called", call.to),
            ("Caller", call.from_number),
            ("Direction", "inbound" if call.direction == "inbound" else "outbound-api"),
            ("From", call.from_number),
            ("To", call.to),
        ]

    def sign(self, webhook: Webhook, accounts: SimAccounts, now: float) -> Delivery:
        params: dict[str, list[str]] = {}
        for name, value in webhook.form:
            params.setdefault(name, []).append(value)
        headers = (
            ("content-type", "application/x-www-form-urlencoded"),
            (SIGNATURE_HEADER, signature(accounts.twilio_auth_token, webhook.url, params)),
            ("i-twilio-idempotency-token", secrets.token_hex(16)),
            ("user-agent", "TwilioProxy/1.1"),
        )
        return Delivery(webhook, headers, urlencode(webhook.form).encode("ascii"))

    def read_answer(self, body: bytes) -> tuple[Verb, ...]:
        return read_twiml(body)

    def directive(self, call: SimCall, name: str, fields: Mapping[str, object]) -> Directive | None:
        if name == "status":
            return None if call.status.live else Hangup()  # ``canceled`` spares a live call
        if name == "twiml":
            twiml, url = fields.get("Twiml"), fields.get("Url")
            if isinstance(twiml, str):
                return Redirect(verbs=read_twiml(twiml.encode("utf-8")))
            if isinstance(url, str):
                return Redirect(url=url)
        return None


def _geo(call: SimCall) -> list[tuple[str, str]]:
    if call.direction != "inbound":
        return []
    return [
        ("FromCity", "SAN FRANCISCO"),
        ("FromState", "CA"),
        ("FromCountry", "US"),
        ("ToCountry", "US"),
        ("StirVerstat", "TN-Validation-Passed-A"),
    ]


def read_twiml(body: bytes) -> tuple[Verb, ...]:
    """The verbs of a TwiML document; ``ValueError`` when Twilio could not run it."""
    try:
        root = ET.fromstring(body) if body.strip() else None  # noqa: S314 - the daemon's answer
    except ET.ParseError as error:
        raise ValueError(f"TwiML is not XML: {error}") from None
    if root is None or root.tag != "Response":
        raise ValueError("TwiML must be a <Response> document")
    verbs: list[Verb] = []
    for element in root:
        verbs.append(_verb(element))
    return tuple(verbs)


def _verb(element: ET.Element) -> Verb:
    tag = element.tag
    if tag == "Say":
        return Say((element.text or "").strip())
    if tag == "Play":
        digits = element.get("digits")
        if digits:
            return Digits(digits)
        return Pause(1.0)  # an audio URL the simulator does not fetch: a second of it
    if tag == "Pause":
        return Pause(float(element.get("length", "1")))
    if tag == "Hangup":
        return Hangup()
    if tag == "Reject":
        return Hangup(rejected=True)
    if tag in ("Connect", "Start"):
        streams = [child for child in element if child.tag == "Stream"]
        if len(streams) != 1 or len(element) != 1:
            raise ValueError(f"<{tag}> must hold exactly one <Stream>")
        return Stream(_stream(streams[0], connect=tag == "Connect"))
    raise ValueError(f"unsupported TwiML verb <{tag}>")


def _stream(element: ET.Element, *, connect: bool) -> StreamOrder:
    url = element.get("url", "")
    if not url.startswith(("wss://", "ws://")):
        raise ValueError(f"<Stream url> must be a websocket URL, got {url!r:.80}")
    if "?" in url:
        raise ValueError("<Stream url> takes no query string (use <Parameter>)")
    parameters = {
        child.get("name", ""): child.get("value", "")
        for child in element
        if child.tag == "Parameter"
    }
    return StreamOrder(url, parameters=parameters, bidirectional=connect, blocking=connect)


class TwilioMedia:
    """One Twilio Media Stream's messages, as Twilio writes and reads them."""

    def __init__(self, account_sid: str, call: SimCall, order: StreamOrder, stream_id: str) -> None:
        self._account_sid = account_sid
        self._call = call
        self._order = order
        self._sid = stream_id
        self._sequence = 0

    def _next(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def opening(self) -> list[bytes]:
        start = {
            "accountSid": self._account_sid,
            "streamSid": self._sid,
            "callSid": self._call.carrier_id,
            "tracks": ["inbound"],
            "customParameters": dict(self._order.parameters),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        return [
            orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            orjson.dumps(
                {
                    "event": "start",
                    "sequenceNumber": self._next(),
                    "streamSid": self._sid,
                    "start": start,
                }
            ),
        ]

    def media(self, chunk: int, millis: int, epoch_millis: int, payload: str) -> bytes:
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(millis),
            "payload": payload,
        }
        return orjson.dumps(
            {
                "event": "media",
                "sequenceNumber": self._next(),
                "streamSid": self._sid,
                "media": media,
            }
        )

    def dtmf(self, digit: str) -> bytes:
        dtmf = {"track": "inbound_track", "digit": digit}
        return orjson.dumps(
            {"event": "dtmf", "sequenceNumber": self._next(), "streamSid": self._sid, "dtmf": dtmf}
        )

    def played(self, name: str) -> bytes:
        return orjson.dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next(),
                "streamSid": self._sid,
                "mark": {"name": name},
            }
        )

    def cleared(self) -> bytes | None:
        return None  # Twilio answers a clear only by echoing the marks it dropped

    def stop(self) -> bytes | None:
        stop = {"accountSid": self._account_sid, "callSid": self._call.carrier_id}
        return orjson.dumps(
            {"event": "stop", "sequenceNumber": self._next(), "streamSid": self._sid, "stop": stop}
        )

    def read(self, message: bytes) -> Heard:
        try:
            frame: Any = orjson.loads(message)
            if frame.get("streamSid") != self._sid:
                return _INVALID  # 31951: the wrong streamSid
            event = frame.get("event")
            if event == "media":
                payload = frame["media"]["payload"]
                return Heard("media", binascii.a2b_base64(payload, strict_mode=True))
            if event == "mark":
                name = frame["mark"]["name"]
                return Heard("mark", name=name) if isinstance(name, str) and name else _INVALID
            if event == "clear":
                return Heard("clear")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, binascii.Error):
            pass
        return _INVALID
