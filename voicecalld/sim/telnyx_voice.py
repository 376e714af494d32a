"""The simulated Telnyx's voice side: its webhooks, its commands, its media streams (pure).

As Telnyx Call Control v2 does it (carriers.md §3):

- **Webhooks** are JSON POSTs in the ``{"data": {"record_type": "event", "event_type", "id",
  "occurred_at", "payload"}, "meta": {"attempt", "delivered_to"}}`` envelope, to the call's
  ``webhook_url`` (or the connection's), signed Ed25519 over ``"{timestamp}|{body}"``
  (``telnyx-signature-ed25519`` + ``telnyx-timestamp``). ``direction`` is
  ``incoming``/``outgoing``; every payload echoes the ``client_state`` of the call's last
  command. There is no ringing event; a redelivery is a new request (``meta.attempt`` counts
  up, a new timestamp and signature) with the same ``data.id``.
- **The answer is ignored**: Telnyx moves a call along only on commands (``actions/answer``
  with stream fields, ``streaming_start``, ``speak``, ``hangup``, ``reject``), which the REST
  half records and :meth:`TelnyxVoice.directive` reads. ``stream_bidirectional_mode`` defaults
  to ``mp3``: only ``rtp`` streams play raw audio voicecalld sends back.
- **Media streams** send ``connected`` (with the ``stream_auth_token``, if any), ``start``
  (``stream_id`` top-level, ``call_control_id`` and the echoed ``client_state`` and
  ``custom_parameters`` inside), ``media``, ``dtmf``, ``mark`` and ``stop``, numbers as strings;
  the codec follows ``stream_codec`` (``PCMU`` when unset). Telnyx reads ``media``, ``mark``
  and ``clear``.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import orjson

from voicecalld.carriers.telnyx.wire import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from voicecalld.sim.dialect import (
    Answer,
    Context,
    Delivery,
    Directive,
    Hangup,
    Happening,
    Heard,
    Say,
    StartStream,
    StopStream,
    StreamOrder,
    Verb,
    Webhook,
)
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus

__all__ = ["TelnyxMedia", "TelnyxVoice", "stream_order"]

_EVENT_TYPES: Final = {
    Happening.INITIATED: "call.initiated",
    Happening.ANSWERED: "call.answered",
    Happening.ENDED: "call.hangup",
    Happening.STREAM_STARTED: "streaming.started",
    Happening.STREAM_STOPPED: "streaming.stopped",
    Happening.SPEAK_STARTED: "call.speak.started",
    Happening.SPEAK_ENDED: "call.speak.ended",
    Happening.DTMF: "call.dtmf.received",
}
_HANGUP_CAUSES: Final = {
    SimStatus.COMPLETED: "normal_clearing",
    SimStatus.BUSY: "user_busy",
    SimStatus.NO_ANSWER: "timeout",
    SimStatus.FAILED: "not_found",
    SimStatus.CANCELED: "originator_cancel",
}
_SIP_CAUSES: Final = {
    SimStatus.COMPLETED: "200",
    SimStatus.BUSY: "486",
    SimStatus.NO_ANSWER: "487",
    SimStatus.FAILED: "404",
    SimStatus.CANCELED: "487",
}
_CODECS: Final = {"PCMU": "mulaw", "PCMA": "alaw"}
_INVALID: Final = Heard("invalid")


class TelnyxVoice:
    name = "telnyx"
    instructs_by_answer = False

    def __init__(self, accounts: SimAccounts) -> None:
        self.accounts = accounts
        self._user_id = str(uuid.uuid5(uuid.NAMESPACE_OID, accounts.telnyx_connection_id))

    def webhooks(self, call: SimCall, happening: Happening, context: Context) -> list[Webhook]:
        event_type = _EVENT_TYPES.get(happening)
        if event_type is None or not call.status_callback:
            return []
        payload: dict[str, Any] = {
            **self._ids(call),
            "client_state": call.client_state,
            "connection_id": self.accounts.telnyx_connection_id,
        }
        if happening in (Happening.INITIATED, Happening.ANSWERED, Happening.ENDED):
            payload |= {
                "direction": "incoming" if call.direction == "inbound" else "outgoing",
                "from": call.from_number,
                "to": call.to,
                "start_time": _time(call.created_at),
            }
        if happening is Happening.INITIATED:
            payload |= {
                "state": "parked" if call.direction == "inbound" else "bridging",
                "caller_id_name": call.from_number,
                "connection_codecs": "G722,PCMU,PCMA,G729",
            }
        elif happening is Happening.ANSWERED:
            payload["state"] = "answered"
        elif happening is Happening.ENDED:
            rejected = any(name == "reject" for name, _ in call.actions)
            payload |= {
                "state": "hangup",
                "hangup_cause": "call_rejected" if rejected else _HANGUP_CAUSES[call.status],
                "hangup_source": _hangup_source(call, context.hung_up_by),
                "sip_hangup_cause": _SIP_CAUSES[call.status],
                "end_time": _time(context.now),
                "call_quality_stats": None,
            }
        elif happening in (Happening.STREAM_STARTED, Happening.STREAM_STOPPED):
            payload |= {"stream_id": context.stream_id, "stream_url": context.stream_url}
        elif happening is Happening.SPEAK_ENDED:
            payload["status"] = "completed"
        elif happening is Happening.DTMF:
            payload |= {"from": call.from_number, "to": call.to, "digit": context.digit}
        document = {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": _time(context.now),
                "payload": payload,
            },
            "meta": {"attempt": context.attempt, "delivered_to": call.status_callback},
        }
        return [Webhook(event_type, "POST", call.status_callback, json=orjson.dumps(document))]

    def _ids(self, call: SimCall) -> dict[str, str]:
        leg = str(uuid.uuid5(uuid.NAMESPACE_URL, call.carrier_id))
        return {"call_control_id": call.carrier_id, "call_leg_id": leg, "call_session_id": leg}

    def sign(self, webhook: Webhook, accounts: SimAccounts, now: float) -> Delivery:
        timestamp = str(int(now))
        headers = (
            ("content-type", "application/json"),
            (SIGNATURE_HEADER, sign(accounts.telnyx_signing_seed, timestamp, webhook.json)),
            (TIMESTAMP_HEADER, timestamp),
            ("user-agent", "telnyx-webhooks"),
        )
        return Delivery(webhook, headers, webhook.json)

    def read_answer(self, body: bytes) -> tuple[Verb, ...]:
        return ()  # Telnyx ignores what a webhook answers

    def directive(self, call: SimCall, name: str, fields: Mapping[str, object]) -> Directive | None:
        if name == "answer":
            return Answer(stream_order(call, fields) if fields.get("stream_url") else None)
        if name == "streaming_start":
            return StartStream(stream_order(call, fields))
        if name == "streaming_stop":
            return StopStream()
        if name == "speak":
            text = fields.get("payload")
            return Say(text if isinstance(text, str) else "")
        if name == "hangup":
            return Hangup()
        if name == "reject":
            return Hangup(rejected=True)
        return None  # send_dtmf: tones to the far end, nothing voicecalld hears of

    def redelivery(self, webhook: Webhook, attempt: int) -> Webhook:
        """The same event (same ``data.id``) with ``meta.attempt`` counted up."""
        document = orjson.loads(webhook.json)
        document["meta"]["attempt"] = attempt
        return attrs.evolve(webhook, json=orjson.dumps(document))

    def upgrade_headers(self, order: StreamOrder, accounts: SimAccounts) -> list[tuple[str, str]]:
        if order.auth_token:
            return [("x-telnyx-streaming-auth-token", order.auth_token)]
        return []

    def stream(self, call: SimCall, order: StreamOrder, stream_id: str) -> TelnyxMedia:
        return TelnyxMedia(self._user_id, call, order, stream_id)

    def new_stream_id(self) -> str:
        return str(uuid.uuid4()).upper()


def stream_order(call: SimCall, fields: Mapping[str, object]) -> StreamOrder:
    """The stream a command's ``stream_*`` fields ask for (``ValueError`` when unusable)."""
    url = fields.get("stream_url")
    if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
        raise ValueError(f"stream_url must be a websocket URL, got {url!r:.80}")
    codec = fields.get("stream_codec") or "PCMU"
    encoding = _CODECS.get(codec) if isinstance(codec, str) else None
    if encoding is None:
        raise ValueError(f"the simulator streams PCMU or PCMA, not {codec!r:.40}")
    parameters: dict[str, str] = {}
    custom = fields.get("custom_parameters") or []
    for item in custom if isinstance(custom, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            parameters[item["name"]] = str(item.get("value", ""))
    client_state = fields.get("client_state")
    auth_token = fields.get("stream_auth_token")
    return StreamOrder(
        url,
        encoding=encoding,
        parameters=parameters,
        client_state=client_state if isinstance(client_state, str) else call.client_state,
        auth_token=auth_token if isinstance(auth_token, str) else None,
        bidirectional=fields.get("stream_bidirectional_mode") == "rtp",
    )


def _time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hangup_source(call: SimCall, hung_up_by: str) -> str:
    """``caller``/``callee`` from the far end's side: voicecalld is the callee of an inbound
    call and the caller of an outbound one."""
    if hung_up_by == "carrier":
        return "unknown"
    remote = "caller" if call.direction == "inbound" else "callee"
    ours = "callee" if call.direction == "inbound" else "caller"
    return remote if hung_up_by == "remote" else ours


class TelnyxMedia:
    """One Telnyx media stream's messages, as Telnyx writes and reads them."""

    def __init__(self, user_id: str, call: SimCall, order: StreamOrder, stream_id: str) -> None:
        self._user_id = user_id
        self._call = call
        self._order = order
        self._id = stream_id
        self._sequence = 0

    def _next(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def opening(self) -> list[bytes]:
        call, order = self._call, self._order
        connected: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
        if order.auth_token:
            connected["x-telnyx-streaming-auth-token"] = order.auth_token
        leg = str(uuid.uuid5(uuid.NAMESPACE_URL, call.carrier_id))
        start: dict[str, Any] = {
            "user_id": self._user_id,
            "call_control_id": call.carrier_id,
            "call_session_id": leg,
            "from": call.from_number,
            "to": call.to,
            "tags": [],
            "client_state": order.client_state,
            "custom_parameters": dict(order.parameters),
            "media_format": {
                "encoding": "PCMU" if order.encoding == "mulaw" else "PCMA",
                "sample_rate": 8000,
                "channels": 1,
            },
        }
        return [
            orjson.dumps(connected),
            orjson.dumps(
                {
                    "event": "start",
                    "sequence_number": self._next(),
                    "stream_id": self._id,
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
                "sequence_number": self._next(),
                "stream_id": self._id,
                "media": media,
            }
        )

    def dtmf(self, digit: str) -> bytes:
        return orjson.dumps(
            {
                "event": "dtmf",
                "sequence_number": self._next(),
                "stream_id": self._id,
                "dtmf": {"digit": digit},
            }
        )

    def played(self, name: str) -> bytes:
        return orjson.dumps(
            {
                "event": "mark",
                "sequence_number": self._next(),
                "stream_id": self._id,
                "mark": {"name": name},
            }
        )

    def cleared(self) -> bytes | None:
        return None  # a clear is answered by the marks it dropped

    def stop(self) -> bytes | None:
        stop = {"user_id": self._user_id, "call_control_id": self._call.carrier_id}
        return orjson.dumps(
            {"event": "stop", "sequence_number": self._next(), "stream_id": self._id, "stop": stop}
        )

    def read(self, message: bytes) -> Heard:
        try:
            frame: Any = orjson.loads(message)
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
