"""Twilio webhooks on the wire: signature check, replay key, parsing and TwiML answers (pure).

Invariants, and why:

- **Signature** (``X-Twilio-Signature``): base64 HMAC-SHA1 with the Auth Token over the URL
  followed by every form field (names sorted, each name's distinct values sorted), compared in
  constant time. The URL is tried as given, without its port and with its port (an explicit
  port kept, the scheme's default added when absent), because Twilio signs some requests with
  the port and some without. The port is cut out of the host part only, so IPv6 literals and
  ``user:pw@`` survive (the SDK's ``remove_port`` splits on the first ``:`` and mangles both).
- **JSON bodies** are believed only with ``bodySHA256`` in the query: the raw body must hash to
  it, and the URL alone is signed. A JSON body without it is invalid: never sign ``{}`` for a
  body nobody checked (the SDK's trap, twilio-python#885).
- **Replay key**: SHA-256 of the signed string and the decoded signature. Everything in it is
  covered by the signature, so a replay cannot be disguised.
- **Parsing** raises :class:`MalformedWebhook` and nothing else, for any input. A request
  without ``CallbackSource`` that carries a ``CallStatus`` is a TwiML fetch
  (``wants_instructions``); a status callback carries ``CallbackSource``; an asynchronous AMD
  callback carries ``AnsweredBy`` but no ``CallStatus`` and wants nothing. ``Digits`` must
  be DTMF symbols (``0-9 * # A-D``; empty is no digits), as Telnyx's ``digit`` must.
- **Answers** are TwiML built with :mod:`xml.etree`: ``<Connect><Stream>`` (bidirectional;
  its URL takes no query string, so the token and call id travel as ``<Parameter>``),
  ``<Say>`` + ``<Hangup>``, ``<Hangup>``, ``<Reject>``, or an empty ``<Response/>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from voicecalld.calls.model import Direction, EndReason
from voicecalld.carriers.base import (
    CarrierStatus,
    HttpReply,
    Instructions,
    MalformedWebhook,
    Reply,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.forms import (
    Fields,
    body_fields,
    call_param,
    decode_base64,
    dtmf_digits,
    e164,
    first,
    url_query,
    xml_reply,
)

__all__ = [
    "SIGNATURE_HEADER",
    "end_reason",
    "has_signature",
    "is_call_id",
    "parse",
    "replay_key",
    "reply",
    "rest_status",
    "signature",
    "stream_after",
    "verify",
]

SIGNATURE_HEADER = "x-twilio-signature"

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_SEQUENCE = re.compile(r"[0-9]{1,9}")
_PORT = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORTS = {"https": "443", "wss": "443"}  # anything else: 80, as the SDK does

_PROGRESS = {
    "queued": WebhookKind.INITIATED,
    "initiated": WebhookKind.INITIATED,
    "ringing": WebhookKind.RINGING,
    "in-progress": WebhookKind.ANSWERED,
}
_ENDED = {
    "completed": EndReason.COMPLETED,
    "busy": EndReason.BUSY,
    "failed": EndReason.FAILED,
    "no-answer": EndReason.NO_ANSWER,
    "canceled": EndReason.CANCELED,
}
_HUMAN_OR_UNSURE = frozenset({"human", "unknown"})
"""``AnsweredBy`` values that are not a machine; ``machine_*`` and ``fax`` are."""


# -- signature ---------------------------------------------------------------------------------


def has_signature(headers: Mapping[str, str]) -> bool:
    return bool(headers.get(SIGNATURE_HEADER))


def signature(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for ``url`` and form ``params`` (simulator, tests).

    >>> signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", {"CallSid": "CA1"})
    'dQhmfUwK0jYV2c79WK7qbkC265s='
    """
    return base64.b64encode(_digest(auth_token, _signed_string(url, params))).decode("ascii")


def verify(request: WebhookRequest, auth_token: str) -> bool:
    """Whether ``request`` carries a valid Twilio signature for ``auth_token``."""
    if not auth_token:
        return False
    try:
        given = decode_base64(request.headers.get(SIGNATURE_HEADER, ""))
    except ValueError:
        return False
    params = _signed_params(request)
    if params is None:
        return False
    signed_fields = _request_fields_string(request, params)  # the same for every URL variant
    return any(
        hmac.compare_digest(_digest(auth_token, url + signed_fields), given)
        for url in _url_variants(request.url)
    )


def replay_key(request: WebhookRequest) -> str:
    """SHA-256 hex of the signed string and the decoded signature of ``request``."""
    params = _signed_params(request)
    material = request.url + _request_fields_string(request, params if params is not None else {})
    header = request.headers.get(SIGNATURE_HEADER, "")
    try:
        sig = decode_base64(header).hex()
    except ValueError:
        sig = header
    data = f"twilio\n{material}\n{sig}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _digest(auth_token: str, signed: str) -> bytes:
    key = auth_token.encode("utf-8", "surrogatepass")
    return hmac.new(key, signed.encode("utf-8", "surrogatepass"), hashlib.sha1).digest()


def _signed_string(url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    return url + _fields_string(params)


def _request_fields_string(request: WebhookRequest, params: Fields) -> str:
    """:func:`_fields_string` of a request's signed fields, built once (verify and replay_key)."""
    cached = request.memo.get("signed-fields")
    if not isinstance(cached, str):
        cached = request.memo["signed-fields"] = _fields_string(params)
    return cached


def _fields_string(params: Mapping[str, str | Sequence[str]]) -> str:
    """The fields' part of the signed string: each name, then each of its values, sorted."""
    parts = []
    for name in sorted(params):
        values = params[name]
        for value in sorted({values} if isinstance(values, str) else set(values)):
            parts.append(name)
            parts.append(value)
    return "".join(parts)


def _signed_params(request: WebhookRequest) -> Fields | None:
    """The form fields Twilio signed, ``{}`` for a hash-checked JSON body, ``None`` if invalid."""
    try:
        body_hash = first(url_query(request), "bodySHA256")
    except ValueError:
        return None
    if body_hash is not None:
        actual = hashlib.sha256(request.body).hexdigest().encode("ascii")
        expected = body_hash.encode("utf-8", "surrogatepass")
        return {} if hmac.compare_digest(actual, expected) else None
    if "json" in request.headers.get("content-type", "").lower():
        return None
    try:
        return body_fields(request)
    except ValueError:
        return None


def _url_variants(url: str) -> list[str]:
    """``url`` as given, without its port, and with its (explicit or default) port."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):  # IPv6 literal: the port, if any, follows the bracket
        host, bracket, port = hostport.partition("]")
        host += bracket
        if port and not port.startswith(":"):
            return [url]
        port = port[1:]
        explicit = hostport != host
    else:
        host, colon, port = hostport.partition(":")
        explicit = bool(colon)
    if explicit and not _PORT.fullmatch(port):
        return [url]
    if not explicit:
        port = _DEFAULT_PORTS.get(parts.scheme.lower(), "80")
    prefix = userinfo + at + host
    variants = [url, _with_netloc(parts, prefix), _with_netloc(parts, f"{prefix}:{port}")]
    return list(dict.fromkeys(variants))


def _with_netloc(parts: SplitResult, netloc: str) -> str:
    return parts._replace(netloc=netloc).geturl()


# -- parsing -----------------------------------------------------------------------------------


def parse(request: WebhookRequest) -> WebhookEvent:
    """Read a verified Twilio voice webhook; :class:`MalformedWebhook` if it makes no sense."""
    try:
        query = url_query(request)
        fields = query if request.method.upper() == "GET" else body_fields(request)
        call_id = call_param(request.url)
    except ValueError as error:
        raise MalformedWebhook(f"Twilio webhook is not valid form encoding: {error}") from None
    if "bodySHA256" in query:
        raise MalformedWebhook("Twilio webhook with a JSON body is not a voice webhook")
    sid = first(fields, "CallSid")
    if sid is None or not is_call_id(sid):
        raise MalformedWebhook(f"Twilio webhook without a valid CallSid: {sid!r:.60}")

    status = first(fields, "CallStatus")
    answered_by = first(fields, "AnsweredBy")
    try:
        digits = dtmf_digits(first(fields, "Digits"))
    except ValueError as error:
        raise MalformedWebhook(f"Twilio Digits: {error}") from None
    machine = answered_by is not None and answered_by not in _HUMAN_OR_UNSURE
    reason: EndReason | None = None
    if digits:
        kind = WebhookKind.DTMF
    elif machine or (answered_by is not None and status is None):
        kind = WebhookKind.MACHINE
    elif status in _PROGRESS:
        kind = _PROGRESS[status]
    elif status in _ENDED:
        kind, reason = WebhookKind.ENDED, _ENDED[status]
    else:
        kind = WebhookKind.OTHER

    return WebhookEvent(
        kind=kind,
        provider_call_id=sid,
        call_id=call_id,
        direction=_direction(first(fields, "Direction")),
        from_number=e164(first(fields, "From")),
        to=e164(first(fields, "To")),
        end_reason=reason,
        digits=digits,
        machine=machine,
        wants_instructions=status is not None and "CallbackSource" not in fields,
        sequence=_sequence(first(fields, "SequenceNumber")),
    )


def _direction(value: str | None) -> Direction | None:
    if value == "inbound":
        return Direction.INBOUND
    if value is not None and value.startswith(("outbound", "trunking")):
        return Direction.OUTBOUND_API  # the manager decides whether voicecalld placed it
    return None


def _sequence(value: str | None) -> int | None:
    if value is None:
        return None
    if not _SEQUENCE.fullmatch(value):
        raise MalformedWebhook(f"Twilio SequenceNumber is not a number: {value!r:.40}")
    return int(value)


# -- answers -----------------------------------------------------------------------------------


def reply(event: WebhookEvent | None, instructions: Instructions, media_url: str) -> HttpReply:
    """The TwiML answer carrying ``instructions``; ``media_url`` is the ``wss://`` stream URL.

    ``event`` is accepted for the carrier protocol: the manager's instructions already say
    everything (an ACK for status callbacks and replays). Raises ``ValueError`` for a STREAM
    without a token or a ``media_url`` with a query string, both programming errors.
    """
    root = ET.Element("Response")
    if instructions.reply is Reply.STREAM:
        if not instructions.stream_token:
            raise ValueError("a STREAM answer needs a stream token")
        _connect_stream(root, instructions.call_id, instructions.stream_token, media_url)
    elif instructions.reply is Reply.SAY_AND_HANGUP:
        ET.SubElement(root, "Say").text = instructions.text
        ET.SubElement(root, "Hangup")
    elif instructions.reply is Reply.HANGUP:
        ET.SubElement(root, "Hangup")
    elif instructions.reply is Reply.REJECT:
        ET.SubElement(root, "Reject", reason="rejected")
    return xml_reply(root)


def stream_after(
    verb: ET.Element, call_id: str | None, stream_token: str, media_url: str
) -> HttpReply:
    """TwiML that runs ``verb`` (``<Say>``, ``<Play digits=...>``), then reconnects the stream.

    For speaking or sending DTMF on a live call through REST: ``<Connect><Stream>`` blocks, so
    the verb goes first and a fresh stream (same form as the STREAM answer) follows it.
    """
    root = ET.Element("Response")
    root.append(verb)
    _connect_stream(root, call_id, stream_token, media_url)
    return xml_reply(root)


def _connect_stream(root: ET.Element, call_id: str | None, token: str, media_url: str) -> None:
    """``<Connect><Stream url>`` with the token (and call id) as ``<Parameter>``s."""
    if urlsplit(media_url).query or "#" in media_url:
        raise ValueError("Twilio <Stream> URLs take no query string: pass <Parameter>s")
    stream = ET.SubElement(ET.SubElement(root, "Connect"), "Stream", url=media_url)
    ET.SubElement(stream, "Parameter", name="token", value=token)
    if call_id:
        ET.SubElement(stream, "Parameter", name="call", value=call_id)


# -- REST helpers ------------------------------------------------------------------------------


def is_call_id(text: str) -> bool:
    """Whether ``text`` is a Call SID (``CA`` + 32 hex): the only thing put in a REST URL."""
    return _CALL_SID.fullmatch(text) is not None


def end_reason(status: str) -> EndReason | None:
    """The end reason of a terminal Twilio call status (``busy`` stays busy); ``None`` if live."""
    return _ENDED.get(status)


def rest_status(status: str) -> CarrierStatus:
    """A Call resource's ``status`` as voicecalld's :class:`CarrierStatus`.

    ``queued``/``initiated``/``ringing`` are live and unanswered, ``in-progress`` live and
    answered, the rest ended with their real reason. ``ValueError`` for a value Twilio does not
    document (the caller treats it as a carrier error and asks again later).
    """
    if status in _ENDED:
        return CarrierStatus(live=False, end_reason=_ENDED[status])
    if status in _PROGRESS:
        return CarrierStatus(
            live=True, answered=status == "in-progress", ringing=status == "ringing"
        )
    raise ValueError(f"unknown Twilio call status {status!r:.40}")
