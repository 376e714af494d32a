"""Plivo webhooks on the wire: signature check, replay key, parsing and Plivo XML answers (pure).

Invariants, and why:

- **V3 signature** (``X-Plivo-Signature-V3`` or the main-account ``-Ma-V3``, with
  ``-V3-Nonce``): base64 HMAC-SHA256 with the Auth Token over a canonical URL and the nonce,
  built exactly as ``plivo.utils.signature_v3`` builds it: ``scheme://netloc/path``, then the
  query sorted by name and value (``k=v`` joined by ``&``, decoded as UTF-8, not re-encoded:
  the Python SDK raises on a non-ASCII query, plivo-node decodes UTF-8); a GET merges nothing
  else, a POST with body fields appends ``.`` (when there is a query) and every ``name+value``
  sorted. The header may
  hold several comma-separated signatures; each is base64-decoded and compared as bytes in
  constant time.
- **V2** (``-V2`` + ``-V2-Nonce``: HMAC over the base URL and nonce, no query, no body) is used
  only when a request carries no V3 headers at all. Falling back when V3 *fails* would let
  anyone who saw one request rewrite its body and keep its V2 signature.
- **Replay key**: SHA-256 of the canonical URL (with its fields) and the nonce the signature
  covered, so reordering the query does not make a new key (OpenClaw PR #56003).
- **Parsing** raises :class:`MalformedWebhook` and nothing else. ``wants_instructions`` (the
  answer_url request, which must be answered with XML): ``Event`` is ``StartApp``, ``Transfer``
  or ``Redirect``; or, with no ``Event``, an answered call (``in-progress``) or a ringing
  inbound one. Every other ``Event`` (``Hangup``, ``Ring``, ``MachineDetection``, stream
  status) wants nothing. ``timeout`` ends a call ``no-answer``; ``cancel`` ends it ``canceled``.
  ``Digits`` must be DTMF symbols (``0-9 * # A-D``; empty is no digits).
- **Answers** are Plivo XML built with :mod:`xml.etree`. The stream is bidirectional μ-law
  8 kHz with ``keepCallAlive`` (otherwise the call ends when the element does), and the
  stream token travels in ``extraHeaders`` (echoed as ``extra_headers`` on ``start``) as
  ``token=<hex>`` and nothing else: Plivo allows only alphanumeric values there (carriers.md
  §2.3), which a call id (``c_...``) is not, and the token alone names the call at stream
  start (the manager redeems it for its call, and the ``start``'s ``callId`` must match).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse, urlunparse

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
    parse_form,
    url_query,
    xml_reply,
)
from voicecalld.carriers.plivo.stream import CONTENT_TYPE, SAMPLE_RATE

__all__ = [
    "MA_V2",
    "MA_V3",
    "V2",
    "V2_NONCE",
    "V3",
    "V3_NONCE",
    "cdr_end_reason",
    "cdr_status",
    "end_reason",
    "has_signature",
    "is_call_id",
    "live_status",
    "parse",
    "replay_key",
    "reply",
    "signature_v2",
    "signature_v3",
    "verify",
]

# Signature headers, lower-case as WebhookRequest has them (``MA_``: the main account token).
V3 = "x-plivo-signature-v3"
MA_V3 = "x-plivo-signature-ma-v3"
V3_NONCE = "x-plivo-signature-v3-nonce"
V2 = "x-plivo-signature-v2"
MA_V2 = "x-plivo-signature-ma-v2"
V2_NONCE = "x-plivo-signature-v2-nonce"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEADER_VALUE = re.compile(r"[A-Za-z0-9]+")
_INSTRUCTING_EVENTS = frozenset({"StartApp", "Transfer", "Redirect"})

_ENDED = {
    "completed": EndReason.COMPLETED,
    "busy": EndReason.BUSY,
    "failed": EndReason.FAILED,
    "no-answer": EndReason.NO_ANSWER,
    "timeout": EndReason.NO_ANSWER,
    "cancel": EndReason.CANCELED,
}
_LIVE_ANSWERED = {"queued": False, "ringing": False, "in-progress": True}
_CDR_CODES = {3000: EndReason.NO_ANSWER, 3010: EndReason.BUSY, 3020: EndReason.BUSY}
"""Plivo hangup codes with their own reason: No Answer, Busy Line, Rejected (a decline is
heard as busy, as at Twilio). Other codes go by their documented range (:func:`cdr_end_reason`)."""


# -- signatures --------------------------------------------------------------------------------


def has_signature(headers: Mapping[str, str]) -> bool:
    v3 = (headers.get(V3) or headers.get(MA_V3)) and headers.get(V3_NONCE)
    v2 = (headers.get(V2) or headers.get(MA_V2)) and headers.get(V2_NONCE)
    return bool(v3 or v2)


def signature_v3(
    auth_token: str, method: str, url: str, params: Mapping[str, str | Sequence[str]], nonce: str
) -> str:
    """The ``X-Plivo-Signature-V3`` Plivo sends for this request (simulator, tests).

    ``params`` are the decoded body fields of a POST; for a GET they are merged into the query,
    the query winning, as the SDK does. ``method`` is compared case-insensitively (the SDK
    treats ``"get"`` as POST).
    """
    return _b64(_v3_digest(auth_token, _canonical_v3(method, url, params), nonce))


def signature_v2(auth_token: str, url: str, nonce: str) -> str:
    """The legacy ``X-Plivo-Signature-V2``: the base URL (no query) and the nonce."""
    return _b64(_hmac(auth_token, _base_url(url) + nonce))


def verify(request: WebhookRequest, auth_token: str) -> bool:
    """Whether ``request`` carries a valid V3 (or, without any V3 header, V2) signature."""
    if not auth_token:
        return False
    headers = request.headers
    v3 = _joined(headers.get(V3), headers.get(MA_V3))
    if v3 or V3_NONCE in headers:
        canonical = _request_canonical_v3(request)
        nonce = headers.get(V3_NONCE)
        if canonical is None or not nonce:
            return False
        return _any_matches(_v3_digest(auth_token, canonical, nonce), v3)
    v2 = _joined(headers.get(V2), headers.get(MA_V2))
    nonce = headers.get(V2_NONCE)
    if not v2 or not nonce:
        return False
    return _any_matches(_hmac(auth_token, _base_url(request.url) + nonce), v2)


def replay_key(request: WebhookRequest) -> str:
    """SHA-256 hex of the canonical URL and the nonce that the accepted signature covered."""
    headers = request.headers
    if headers.get(V3) or headers.get(MA_V3) or V3_NONCE in headers:
        canonical = _request_canonical_v3(request)
        if canonical is None:  # never verified; still a stable key
            canonical = request.url + "\n" + hashlib.sha256(request.body).hexdigest()
        material = f"plivo-v3\n{canonical}\n{headers.get(V3_NONCE, '')}"
    else:
        material = f"plivo-v2\n{_base_url(request.url)}\n{headers.get(V2_NONCE, '')}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def _request_canonical_v3(request: WebhookRequest) -> str | None:
    try:
        params = {} if request.method.upper() == "GET" else body_fields(request)
        return _canonical_v3(request.method, request.url, params)
    except ValueError:
        return None


def _canonical_v3(method: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    query: Mapping[str, str | Sequence[str]] = parse_form(parts.query)
    if method.upper() == "GET":
        query = {**params, **query}  # the SDK's dict.update: the query wins
        params = {}
    pairs = "&".join(f"{name}={value}" for name, value in _sorted_items(query))
    if not params:
        return base + "?" + pairs if pairs else base
    fields = "".join(name + value for name, value in _sorted_items(params))
    return base + "?" + pairs + ("." if pairs else "") + fields


def _sorted_items(fields: Mapping[str, str | Sequence[str]]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for name in sorted(fields):
        values = fields[name]
        items.extend(
            (name, value) for value in sorted([values] if isinstance(values, str) else values)
        )
    return items


def _base_url(url: str) -> str:
    try:
        parts = urlparse(url)
    except ValueError:
        return url
    return urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))


def _v3_digest(auth_token: str, canonical: str, nonce: str) -> bytes:
    return _hmac(auth_token, f"{canonical}.{nonce}")


def _hmac(auth_token: str, message: str) -> bytes:
    key = auth_token.encode("utf-8", "surrogatepass")
    return hmac.new(key, message.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def _joined(*headers: str | None) -> str:
    return ",".join(header for header in headers if header)


def _any_matches(expected: bytes, header: str) -> bool:
    valid = False
    for candidate in header.split(","):
        try:
            given = decode_base64(candidate)
        except ValueError:
            continue
        valid |= hmac.compare_digest(expected, given)
    return valid


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


# -- parsing -----------------------------------------------------------------------------------


def parse(request: WebhookRequest) -> WebhookEvent:
    """Read a verified Plivo voice callback; :class:`MalformedWebhook` if it makes no sense."""
    try:
        fields: Fields = (
            url_query(request) if request.method.upper() == "GET" else body_fields(request)
        )
        call_id = call_param(request.url)
    except ValueError as error:
        raise MalformedWebhook(f"Plivo callback is not valid form encoding: {error}") from None
    call_uuid = first(fields, "CallUUID")
    if call_uuid is None or not is_call_id(call_uuid):
        raise MalformedWebhook(f"Plivo callback without a valid CallUUID: {call_uuid!r:.60}")
    request_id = first(fields, "RequestUUID")
    if request_id is not None and not is_call_id(request_id):
        raise MalformedWebhook(f"Plivo RequestUUID is not a UUID: {request_id!r:.60}")

    event = first(fields, "Event")
    status = first(fields, "CallStatus")
    direction = first(fields, "Direction")
    try:
        digits = dtmf_digits(first(fields, "Digits"))
    except ValueError as error:
        raise MalformedWebhook(f"Plivo Digits: {error}") from None
    machine = False
    reason: EndReason | None = None
    if event == "MachineDetection":
        kind = WebhookKind.MACHINE
        machine = (first(fields, "Machine") or "").lower() == "true"
    elif digits:
        kind = WebhookKind.DTMF
    elif status == "ringing":
        kind = WebhookKind.RINGING
    elif status == "in-progress":
        kind = WebhookKind.ANSWERED
    elif status in _ENDED:
        kind, reason = WebhookKind.ENDED, _ENDED[status]
    else:
        kind = WebhookKind.OTHER

    if event is not None:
        wants_instructions = event in _INSTRUCTING_EVENTS
    else:
        wants_instructions = status == "in-progress" or (
            status == "ringing" and direction == "inbound"
        )
    return WebhookEvent(
        kind=kind,
        provider_call_id=call_uuid,
        call_id=call_id,
        direction={"inbound": Direction.INBOUND, "outbound": Direction.OUTBOUND_API}.get(
            direction or ""
        ),
        from_number=e164(first(fields, "From")),
        to=e164(first(fields, "To")),
        end_reason=reason,
        digits=digits,
        machine=machine,
        wants_instructions=wants_instructions,
        request_id=request_id,
    )


# -- answers -----------------------------------------------------------------------------------


def reply(event: WebhookEvent | None, instructions: Instructions, media_url: str) -> HttpReply:
    """The Plivo XML answer carrying ``instructions``; ``media_url`` is the ``wss://`` URL.

    ``event`` is accepted for the carrier protocol; the instructions say everything. Raises
    ``ValueError`` for a STREAM without a token, or with a token Plivo's ``extraHeaders``
    cannot carry (not alphanumeric): both programming errors.
    """
    root = ET.Element("Response")
    if instructions.reply is Reply.STREAM:
        token = instructions.stream_token
        if not token:
            raise ValueError("a STREAM answer needs a stream token")
        if not _HEADER_VALUE.fullmatch(token):
            raise ValueError("the stream token must be alphanumeric for extraHeaders")
        stream = ET.SubElement(
            root,
            "Stream",
            bidirectional="true",
            keepCallAlive="true",
            audioTrack="inbound",
            contentType=f"{CONTENT_TYPE};rate={SAMPLE_RATE}",
            extraHeaders=f"token={token}",
        )
        stream.text = media_url
    elif instructions.reply is Reply.SAY_AND_HANGUP:
        ET.SubElement(root, "Speak").text = instructions.text
        ET.SubElement(root, "Hangup")
    elif instructions.reply is Reply.HANGUP:
        ET.SubElement(root, "Hangup")
    elif instructions.reply is Reply.REJECT:
        ET.SubElement(root, "Hangup", reason="rejected")
    return xml_reply(root)


# -- REST helpers ------------------------------------------------------------------------------


def is_call_id(text: str) -> bool:
    """Whether ``text`` is a Plivo UUID (CallUUID or RequestUUID): all a REST URL may hold."""
    return _UUID.fullmatch(text) is not None


def end_reason(call_status: str) -> EndReason | None:
    """The end reason of a terminal ``CallStatus``; ``None`` for a live one."""
    return _ENDED.get(call_status)


def live_status(record: Mapping[str, object]) -> CarrierStatus:
    """``GET /Call/{uuid}/?status=live`` (200) as a :class:`CarrierStatus`.

    ``ValueError`` for a ``call_status`` Plivo does not document.
    """
    status = record.get("call_status")
    if isinstance(status, str) and status in _LIVE_ANSWERED:
        return CarrierStatus(
            live=True, answered=_LIVE_ANSWERED[status], ringing=status == "ringing"
        )
    if isinstance(status, str) and status in _ENDED:
        return CarrierStatus(live=False, end_reason=_ENDED[status])
    raise ValueError(f"unknown Plivo live call_status {status!r:.40}")


def cdr_status(record: Mapping[str, object]) -> CarrierStatus:
    """``GET /Call/{uuid}/`` (200, a call detail record): the call ended, for this reason."""
    return CarrierStatus(live=False, end_reason=cdr_end_reason(record))


def cdr_end_reason(record: Mapping[str, object]) -> EndReason:
    """The reason a CDR's ``hangup_cause_code`` gives.

    Plivo documents code ranges: 1000s canceled, 2000s destination failures, 3000s the
    recipient (3000 no answer, 3010 busy, 3020 rejected), 4000s normal completions, 5000 and up
    errors. An unknown or missing code ends the call ``completed`` (SPEC §7: the carrier says it
    ended, for no reason we know).
    """
    raw = record.get("hangup_cause_code")
    try:
        code = int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else 0
    except ValueError:
        code = 0
    if code in _CDR_CODES:
        return _CDR_CODES[code]
    if 1000 <= code < 2000:
        return EndReason.CANCELED
    if 2000 <= code < 4000 or code >= 5000:
        return EndReason.FAILED
    return EndReason.COMPLETED
