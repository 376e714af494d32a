"""Telnyx Call Control webhooks on the wire: Ed25519 check, replay key, parsing (pure).

Invariants, and why:

- **Signature**: Ed25519 (PyNaCl) over ``telnyx-timestamp + "|" + raw body``, the body exactly
  as received (re-serialised JSON breaks it). The timestamp must be ASCII digits only
  (``int()`` would take ``" 1"``, ``+1`` or ``1_0``) and within 300 s of ``received_at``, either
  way, 300 included: Telnyx signs no URL, so the clock is its only replay bound. The signature
  may be base64 or base64url. Without a valid 32-byte public key nothing verifies.
- **Public keys** are accepted as base64 of the raw 32 bytes, base64 DER SubjectPublicKeyInfo,
  or PEM; :func:`load_public_key` says clearly what is wrong with anything else.
- **Replay key**: SHA-256 of the timestamp, the decoded signature (so base64 and base64url
  spellings are one key) and the body hash.
- **voicecalld's call id** travels in ``client_state`` (base64 of ``call=<id>``, optionally
  ``&token=<stream token>``), which Telnyx echoes on every webhook and on the media stream's
  ``start``. The request URL is not signed, so it is never trusted for anything.
- **Parsing** raises :class:`MalformedWebhook` and nothing else. ``call.speak.ended`` is
  ``SPOKEN``; event types not listed in ``_KINDS`` are ``OTHER``. Telnyx ignores the HTTP answer
  (commands go through REST), so nothing ever ``wants_instructions`` and :func:`reply` is an
  empty 200.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from voicecalld.calls.model import Direction, EndReason
from voicecalld.carriers.base import (
    CarrierStatus,
    HttpReply,
    Instructions,
    MalformedWebhook,
    WebhookEvent,
    WebhookKind,
    WebhookRequest,
)
from voicecalld.carriers.forms import decode_base64, dtmf_digit, e164, first, parse_form

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_SECONDS",
    "ClientState",
    "decode_client_state",
    "encode_client_state",
    "end_reason",
    "has_signature",
    "is_call_id",
    "load_public_key",
    "parse",
    "replay_key",
    "reply",
    "rest_status",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE_SECONDS = 300

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_CALL_CONTROL_ID = re.compile(
    r"v[23]:[A-Za-z0-9_-]{1,500}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_OUR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER SubjectPublicKeyInfo for an Ed25519 key, up to the 32 key bytes (RFC 8410)."""

_HANGUP_CAUSES = {
    "normal_clearing": EndReason.COMPLETED,
    "user_busy": EndReason.BUSY,
    "call_rejected": EndReason.BUSY,
    "no_answer": EndReason.NO_ANSWER,
    "timeout": EndReason.NO_ANSWER,
    "originator_cancel": EndReason.CANCELED,
    "not_found": EndReason.FAILED,
    "time_limit": EndReason.TIMEOUT,
    "machine_detected": EndReason.VOICEMAIL,
}
"""The SDK's ``hangup_cause`` values (``timeout``: ``timeout_secs`` ran out while ringing;
``time_limit``: ``time_limit_secs``), plus ``machine_detected`` that OpenClaw has seen. Any
other cause (``unspecified``, ``user_hangup``, new ones) ends the call ``completed``."""

_KINDS = {
    "call.initiated": WebhookKind.INITIATED,
    "call.answered": WebhookKind.ANSWERED,
    "call.hangup": WebhookKind.ENDED,
    "call.dtmf.received": WebhookKind.DTMF,
    "call.speak.ended": WebhookKind.SPOKEN,
    "call.machine.detection.ended": WebhookKind.MACHINE,
    "call.machine.premium.detection.ended": WebhookKind.MACHINE,
}
_MACHINE_RESULTS = frozenset({"machine", "fax_detected"})
_DIRECTIONS = {"incoming": Direction.INBOUND, "outgoing": Direction.OUTBOUND_API}


# -- keys and signatures -----------------------------------------------------------------------


def load_public_key(text: str) -> bytes:
    """The raw 32-byte Ed25519 key in ``text`` (base64 raw, base64 DER SPKI, or PEM).

    Raises ``ValueError`` saying what is wrong; config validation reports it under
    ``providers.telnyx.public_key``.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty: paste the public key from Mission Control (Keys & Credentials)")
    if text.startswith("-----BEGIN"):
        lines = text.splitlines()
        if len(lines) < 3 or not lines[-1].startswith("-----END"):
            raise ValueError("a PEM key needs its BEGIN and END lines")
        text = "".join(line.strip() for line in lines[1:-1])
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("not base64 (expected base64 of 32 bytes, DER SPKI, or PEM)") from None
    if len(data) == 32:
        return data
    if len(data) == len(_SPKI_PREFIX) + 32 and data.startswith(_SPKI_PREFIX):
        return data[len(_SPKI_PREFIX) :]
    raise ValueError(f"not an Ed25519 public key: {len(data)} bytes, expected 32 (or DER SPKI)")


def sign(seed_or_signing_key: bytes | SigningKey, timestamp: int | str, body: bytes) -> str:
    """The ``telnyx-signature-ed25519`` value for ``body`` at ``timestamp`` (simulator, tests).

    ``seed_or_signing_key`` is a 32-byte seed or a :class:`nacl.signing.SigningKey`.
    """
    key = (
        seed_or_signing_key
        if isinstance(seed_or_signing_key, SigningKey)
        else SigningKey(seed_or_signing_key)
    )
    signed = key.sign(str(timestamp).encode("ascii") + b"|" + body)
    return base64.b64encode(signed.signature).decode("ascii")


def has_signature(headers: Mapping[str, str]) -> bool:
    return bool(headers.get(SIGNATURE_HEADER) and headers.get(TIMESTAMP_HEADER))


def verify(request: WebhookRequest, public_key: bytes) -> bool:
    """Whether ``request`` is signed by ``public_key`` (32 raw bytes) within the time window."""
    if len(public_key) != 32:
        return False
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    if not _TIMESTAMP.fullmatch(timestamp):
        return False
    if not math.isfinite(request.received_at):
        return False
    if abs(int(request.received_at) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    try:
        signature = decode_base64(request.headers.get(SIGNATURE_HEADER, ""))
        VerifyKey(public_key).verify(timestamp.encode("ascii") + b"|" + request.body, signature)
    except (ValueError, BadSignatureError):
        return False
    return True


def replay_key(request: WebhookRequest) -> str:
    """The event's ``data.id``, hashed: the key Telnyx keeps across redeliveries.

    A retry of one event has the same ``data.id`` but a new timestamp and signature, so keying
    on those would apply it twice (a second ``streaming_start``, a second stream). ``data.id``
    is inside the signed body, so it is authenticated material. A body without one (not an
    event) falls back to the timestamp, the decoded signature and the body hash.
    """
    event_id = _event_id(request.body)
    if event_id is not None:
        return hashlib.sha256(
            f"telnyx-event\n{event_id}".encode("utf-8", "surrogatepass")
        ).hexdigest()
    header = request.headers.get(SIGNATURE_HEADER, "")
    try:
        signature = decode_base64(header).hex()
    except ValueError:
        signature = header
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    material = f"telnyx\n{timestamp}\n{signature}\n{hashlib.sha256(request.body).hexdigest()}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def _event_id(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = document.get("data") if isinstance(document, dict) else None
    event_id = data.get("id") if isinstance(data, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


# -- client_state ------------------------------------------------------------------------------


@attrs.frozen
class ClientState:
    """What voicecalld put in a Telnyx ``client_state``."""

    call_id: str | None = None
    token: str | None = None


def encode_client_state(call_id: str, token: str | None = None) -> str:
    """Base64 of ``call=<id>`` (and ``&token=<stream token>``), for Telnyx commands."""
    fields = {"call": call_id} if token is None else {"call": call_id, "token": token}
    return base64.b64encode(urlencode(fields).encode("ascii")).decode("ascii")


def decode_client_state(text: object) -> ClientState:
    """The fields of a ``client_state`` voicecalld wrote; an empty state for anything else.

    Someone else's ``client_state`` (or none) is not an error: the call is then found by its
    ``call_control_id``.
    """
    if not isinstance(text, str) or not text:
        return ClientState()
    try:
        fields = parse_form(decode_base64(text))
    except ValueError:
        return ClientState()
    call_id, token = first(fields, "call"), first(fields, "token")
    return ClientState(
        call_id=call_id if call_id is not None and _OUR_ID.fullmatch(call_id) else None,
        token=token or None,
    )


# -- parsing -----------------------------------------------------------------------------------


def parse(request: WebhookRequest) -> WebhookEvent:
    """Read a verified Telnyx webhook; :class:`MalformedWebhook` if it makes no sense."""
    try:
        return _event(orjson.loads(request.body))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, MalformedWebhook):
            raise
        raise MalformedWebhook(f"Telnyx webhook not understood: {error!r:.200}") from None


def _event(document: Any) -> WebhookEvent:
    data = document["data"]
    event_type = data["event_type"]
    payload = data["payload"]
    control_id = payload["call_control_id"]
    if not isinstance(control_id, str) or not is_call_id(control_id):
        raise MalformedWebhook(
            f"Telnyx webhook without a valid call_control_id: {control_id!r:.60}"
        )
    kind = _KINDS.get(event_type, WebhookKind.OTHER) if isinstance(event_type, str) else None
    if kind is None:
        raise MalformedWebhook(f"Telnyx event_type is not a string: {event_type!r:.40}")
    reason = None
    if kind is WebhookKind.ENDED:
        cause = payload.get("hangup_cause")
        reason = end_reason(cause if isinstance(cause, str) else "")
    return WebhookEvent(
        kind=kind,
        provider_call_id=control_id,
        call_id=decode_client_state(payload.get("client_state")).call_id,
        direction=_DIRECTIONS.get(payload.get("direction")),
        from_number=_number(payload.get("from")),
        to=_number(payload.get("to")),
        end_reason=reason,
        digits=dtmf_digit(payload["digit"]) if kind is WebhookKind.DTMF else "",
        machine=kind is WebhookKind.MACHINE and payload.get("result") in _MACHINE_RESULTS,
    )


def _number(value: object) -> str | None:
    return e164(value) if isinstance(value, str) else None


def reply(event: WebhookEvent | None, instructions: Instructions, media_url: str) -> HttpReply:
    """Always an empty 200: Telnyx ignores webhook answers (commands go through REST)."""
    return HttpReply(200, "text/plain; charset=utf-8", b"")


# -- REST helpers ------------------------------------------------------------------------------


def is_call_id(text: str) -> bool:
    """Whether ``text`` is a ``call_control_id`` (``v2:``/``v3:`` + URL-safe, or a UUID)."""
    return _CALL_CONTROL_ID.fullmatch(text) is not None


def end_reason(hangup_cause: str) -> EndReason:
    """The end reason of a ``call.hangup`` cause; an unknown cause ends ``completed``."""
    return _HANGUP_CAUSES.get(hangup_cause, EndReason.COMPLETED)


def rest_status(data: Mapping[str, object]) -> CarrierStatus:
    """``GET /v2/calls/{id}`` ``data`` as a :class:`CarrierStatus`.

    ``is_alive`` is the only liveness signal; the resource says nothing about answering (so
    ``answered`` is ``None``: unknown) nor why a call ended (so an ended call is ``completed``).
    ``ValueError`` when ``is_alive`` is missing or not a boolean: unknown, ask again later.
    """
    alive = data.get("is_alive")
    if not isinstance(alive, bool):
        raise ValueError(f"Telnyx call status without a boolean is_alive: {alive!r:.40}")
    return (
        CarrierStatus(live=True)
        if alive
        else CarrierStatus(live=False, end_reason=EndReason.COMPLETED)
    )
