"""The simulated Plivo's voice side: its callbacks, its XML reader, its audio streams (pure).

As Plivo does it (carriers.md §2):

- **Callbacks** are form-encoded POSTs to the URLs given when the call was made (``ring_url``
  with ``Event=Ring``, ``answer_url`` with ``Event=StartApp``, ``hangup_url`` with
  ``Event=Hangup`` and the CDR-style cause fields; ``hangup_url`` defaults to ``answer_url``),
  numbers without the ``+``, outbound ones carrying both the ``CallUUID`` and the
  ``RequestUUID`` that creating the call answered. They are signed V3 (``X-Plivo-Signature-V3``
  and the main account's ``-Ma-V3``, HMAC-SHA256 over the canonical URL, the sorted fields and a
  fresh nonce) and, as Plivo still does, V2.
- **Plivo XML** runs element by element: ``<Speak>``, ``<Wait>``, ``<Stream>`` (whose URL is the
  element's text; ``bidirectional`` and ``keepCallAlive`` default to false and
  ``contentType`` to ``audio/x-l16;rate=8000``, so a stream asked for without them is one-way,
  does not hold the call, and carries L16; its ``extraHeaders`` must be ``k=v`` pairs joined
  by ``,``, alphanumeric, at most 512 bytes), ``<Hangup>`` (``reason="rejected"`` refuses the
  call). The call ends when the document does. Anything else is "Invalid Answer XML".
- **Audio streams** send ``start``, ``media``, ``dtmf``, ``playedStream`` and ``clearedAudio``
  (``start`` and ``media`` with a numeric ``sequenceNumber``, ``media`` with a numeric
  ``chunk`` and a Unix-ms ``timestamp``; both echo the ``extraHeaders`` as ``extra_headers``,
  ``;``-separated); no ``stop``: the socket closes. Plivo reads ``playAudio``, ``checkpoint``
  and ``clearAudio``.
"""

from __future__ import annotations

import binascii
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from voicecalld.carriers.plivo.wire import (
    MA_V2,
    MA_V3,
    V2,
    V2_NONCE,
    V3,
    V3_NONCE,
    signature_v2,
    signature_v3,
)
from voicecalld.sim.dialect import (
    Context,
    Delivery,
    Directive,
    Hangup,
    Happening,
    Heard,
    Pause,
    Say,
    Stream,
    StreamOrder,
    Verb,
    Webhook,
)
from voicecalld.sim.plivo_api import HANGUP_CAUSES
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus

__all__ = ["PlivoMedia", "PlivoVoice", "read_plivo_xml"]

_CALL_STATUS: Final = {
    SimStatus.COMPLETED: "completed",
    SimStatus.BUSY: "busy",
    SimStatus.NO_ANSWER: "no-answer",
    SimStatus.FAILED: "failed",
    SimStatus.CANCELED: "cancel",
}
_HANGUP_CAUSES: Final = {
    SimStatus.COMPLETED: "NORMAL_CLEARING",
    SimStatus.BUSY: "USER_BUSY",
    SimStatus.NO_ANSWER: "NO_ANSWER",
    SimStatus.FAILED: "UNALLOCATED_NUMBER",
    SimStatus.CANCELED: "ORIGINATOR_CANCEL",
}
_CONTENT_TYPES: Final = {"audio/x-mulaw": "mulaw", "audio/x-l16": "pcm16"}
_EXTRA_HEADER: Final = re.compile(r"[A-Za-z0-9]+=[A-Za-z0-9]+")
_EXTRA_HEADERS_MAX: Final = 512
_INVALID: Final = Heard("invalid")


class PlivoVoice:
    name = "plivo"
    instructs_by_answer = True

    def __init__(self, accounts: SimAccounts) -> None:
        self.accounts = accounts

    def redelivery(self, webhook: Webhook, attempt: int) -> Webhook:
        return webhook  # signed afresh: a new nonce

    def upgrade_headers(self, order: StreamOrder, accounts: SimAccounts) -> list[tuple[str, str]]:
        return []

    def stream(self, call: SimCall, order: StreamOrder, stream_id: str) -> PlivoMedia:
        return PlivoMedia(self.accounts.plivo_auth_id, call, order, stream_id)

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    def webhooks(self, call: SimCall, happening: Happening, context: Context) -> list[Webhook]:
        if happening is Happening.RINGING and call.ring_url:
            fields = [*self._fields(call, "ringing"), ("Event", "Ring")]
            return [Webhook("ring", "POST", call.ring_url, tuple(fields))]
        if happening is Happening.FETCH and call.answer_url:
            status = "in-progress" if call.answered else "ringing"
            fields = [*self._fields(call, status), ("Event", "StartApp")]
            return [Webhook("answer", "POST", call.answer_url, tuple(fields), wants_answer=True)]
        hangup_url = call.status_callback or call.answer_url
        if happening is Happening.ENDED and hangup_url:
            status = _CALL_STATUS[call.status]
            return [Webhook(f"hangup {status}", "POST", hangup_url, self._hangup(call, context))]
        return []  # Plivo has no initiated or answered callback; streams report on the socket

    def _fields(self, call: SimCall, status: str) -> list[tuple[str, str]]:
        fields = [
            ("CallUUID", call.carrier_id),
            ("From", _bare(call.from_number)),
            ("To", _bare(call.to)),
            ("Direction", "inbound" if call.direction == "inbound" else "outbound"),
            ("CallStatus", status),
        ]
        if call.request_id:
            fields += [
                ("RequestUUID", call.request_id),
                ("ALegUUID", call.carrier_id),
                ("ALegRequestUUID", call.request_id),
            ]
        if call.direction == "inbound":
            fields += [("CallerName", call.from_number), ("BillRate", "0.0085")]
        return fields

    def _hangup(self, call: SimCall, context: Context) -> tuple[tuple[str, str], ...]:
        code, name, source = HANGUP_CAUSES[call.status]
        if call.status is SimStatus.COMPLETED:
            source = _hangup_source(call, context.hung_up_by)
        answered_at = context.now - context.duration
        times = [("StartTime", _time(call.created_at))]
        if call.answered:
            times.append(("AnswerTime", _time(answered_at)))
        return (
            *self._fields(call, _CALL_STATUS[call.status]),
            ("Event", "Hangup"),
            ("HangupCause", _HANGUP_CAUSES[call.status]),
            ("HangupCauseName", name),
            ("HangupCauseCode", str(code)),
            ("HangupSource", source),
            ("Duration", str(context.duration)),
            ("BillDuration", str(-(-context.duration // 60) * 60)),
            *times,
            ("EndTime", _time(context.now)),
            ("TotalCost", "0.00850" if call.answered else "0.00000"),
        )

    def sign(self, webhook: Webhook, accounts: SimAccounts, now: float) -> Delivery:
        params: dict[str, list[str]] = {}
        for name, value in webhook.form:
            params.setdefault(name, []).append(value)
        token = accounts.plivo_auth_token
        nonce = "".join(secrets.choice("0123456789") for _ in range(20))
        v3 = signature_v3(token, webhook.method, webhook.url, params, nonce)
        v2_nonce = "".join(secrets.choice("0123456789") for _ in range(20))
        v2 = signature_v2(token, webhook.url, v2_nonce)
        headers = (
            ("content-type", "application/x-www-form-urlencoded"),
            (V3, v3),
            (MA_V3, v3),  # the simulator's account is its own main account
            (V3_NONCE, nonce),
            (V2, v2),
            (MA_V2, v2),
            (V2_NONCE, v2_nonce),
            ("user-agent", "PlivoHTTP/1.0"),
        )
        return Delivery(webhook, headers, urlencode(webhook.form).encode("ascii"))

    def read_answer(self, body: bytes) -> tuple[Verb, ...]:
        return read_plivo_xml(body)

    def directive(self, call: SimCall, name: str, fields: Mapping[str, object]) -> Directive | None:
        if name in ("hangup", "cancel"):
            return Hangup()
        if name == "speak":
            text = fields.get("text")
            return Say(text if isinstance(text, str) else "")
        return None  # DTMF sent to the callee: nothing voicecalld hears of


def _bare(number: str) -> str:
    """Plivo writes numbers without the ``+``."""
    return number.removeprefix("+")


def _time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _hangup_source(call: SimCall, hung_up_by: str) -> str:
    if hung_up_by == "api":
        return "API Request"
    if hung_up_by == "instructions":
        return "Answer XML"
    if hung_up_by == "remote":
        return "Caller" if call.direction == "inbound" else "Callee"
    return "Plivo"


def read_plivo_xml(body: bytes) -> tuple[Verb, ...]:
    """The elements of a Plivo XML answer; ``ValueError`` for "Invalid Answer XML"."""
    try:
        root = ET.fromstring(body) if body.strip() else None  # noqa: S314 - the daemon's answer
    except ET.ParseError as error:
        raise ValueError(f"answer is not XML: {error}") from None
    if root is None or root.tag != "Response":
        raise ValueError("Plivo XML must be a <Response> document")
    verbs: list[Verb] = []
    for element in root:
        tag = element.tag
        if tag == "Speak":
            verbs.append(Say((element.text or "").strip()))
        elif tag == "Wait":
            verbs.append(Pause(float(element.get("length", "1"))))
        elif tag == "Hangup":
            verbs.append(Hangup(rejected=element.get("reason") in ("rejected", "busy")))
        elif tag == "Stream":
            verbs.append(Stream(_stream(element)))
        else:
            raise ValueError(f"unsupported Plivo XML element <{tag}>")
    return tuple(verbs)


def _stream(element: ET.Element) -> StreamOrder:
    url = (element.text or "").strip()
    if not url.startswith(("wss://", "ws://")):
        raise ValueError(f"<Stream> must hold a websocket URL, got {url!r:.80}")
    bidirectional = element.get("bidirectional", "false") == "true"
    if bidirectional and element.get("audioTrack", "inbound") != "inbound":
        raise ValueError('a bidirectional <Stream> needs audioTrack="inbound"')
    content_type, _, parameters = element.get("contentType", "audio/x-l16;rate=8000").partition(";")
    encoding = _CONTENT_TYPES.get(content_type.strip())
    rate = parameters.strip().removeprefix("rate=")
    if (
        encoding is None
        or rate not in ("8000", "16000")
        or (encoding == "mulaw" and rate != "8000")
    ):
        raise ValueError(f"unsupported <Stream contentType> {element.get('contentType')!r:.60}")
    return StreamOrder(
        url,
        encoding=encoding,
        sample_rate=int(rate),
        extra_headers=_extra_headers(element.get("extraHeaders", "")),
        bidirectional=bidirectional,
        blocking=element.get("keepCallAlive", "false") == "true",
    )


def _extra_headers(text: str) -> str:
    """``extraHeaders`` as Plivo takes them (carriers.md §2.3); ``ValueError`` otherwise."""
    if len(text.encode("utf-8", "surrogatepass")) > _EXTRA_HEADERS_MAX:
        raise ValueError(f"<Stream extraHeaders> over {_EXTRA_HEADERS_MAX} bytes")
    if text and not all(_EXTRA_HEADER.fullmatch(pair) for pair in text.split(",")):
        raise ValueError(f"<Stream extraHeaders> must be alphanumeric k=v pairs: {text!r:.80}")
    return text


class PlivoMedia:
    """One Plivo audio stream's messages, as Plivo writes and reads them."""

    def __init__(self, account_id: str, call: SimCall, order: StreamOrder, stream_id: str) -> None:
        self._account_id = account_id
        self._call = call
        self._order = order
        self._id = stream_id
        self._sequence = 0
        self._echo = ";".join(
            part.strip() for part in order.extra_headers.split(",") if part.strip()
        )

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def opening(self) -> list[bytes]:
        order = self._order
        content_type = "audio/x-mulaw" if order.encoding == "mulaw" else "audio/x-l16"
        start = {
            "callId": self._call.carrier_id,
            "streamId": self._id,
            "accountId": self._account_id,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": content_type, "sampleRate": order.sample_rate},
        }
        return [
            orjson.dumps(
                {
                    "event": "start",
                    "sequenceNumber": self._next(),
                    "start": start,
                    "extra_headers": self._echo,
                }
            )
        ]

    def media(self, chunk: int, millis: int, epoch_millis: int, payload: str) -> bytes:
        media = {
            "track": "inbound",
            "timestamp": str(epoch_millis),
            "chunk": chunk,
            "payload": payload,
        }
        return orjson.dumps(
            {
                "event": "media",
                "sequenceNumber": self._next(),
                "streamId": self._id,
                "media": media,
                "extra_headers": self._echo,
            }
        )

    def dtmf(self, digit: str) -> bytes:
        return orjson.dumps({"event": "dtmf", "streamId": self._id, "dtmf": {"digit": digit}})

    def played(self, name: str) -> bytes:
        return orjson.dumps({"event": "playedStream", "streamId": self._id, "name": name})

    def cleared(self) -> bytes | None:
        return orjson.dumps({"event": "clearedAudio", "streamId": self._id})

    def stop(self) -> bytes | None:
        return None  # Plivo documents no stop message: the socket just closes

    def read(self, message: bytes) -> Heard:
        try:
            frame: Any = orjson.loads(message)
            event = frame.get("event")
            if event == "playAudio":
                media = frame["media"]
                if media.get("contentType") not in ("audio/x-mulaw", "audio/x-l16"):
                    return _INVALID
                return Heard("media", binascii.a2b_base64(media["payload"], strict_mode=True))
            if event == "checkpoint":
                name = frame["name"]
                return Heard("mark", name=name) if isinstance(name, str) and name else _INVALID
            if event == "clearAudio":
                return Heard("clear")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, binascii.Error):
            pass
        return _INVALID
