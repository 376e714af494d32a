"""Telnyx media-streaming messages, read and written (pure, on the media hot path).

From Telnyx: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``error``, ``stop`` (text
JSON). ``stream_id`` is top-level and ``call_control_id`` is inside ``start``. To Telnyx, in RTP
bidirectional mode: ``media``, ``mark``, ``clear``.

- **The token.** Telnyx echoes a ``stream_auth_token`` only on ``connected`` (and as the
  ``x-telnyx-streaming-auth-token`` upgrade header), before the ``start`` that names the call,
  and ``answer`` cannot set one at all. This reader is stateless, so the token is taken from
  ``start``: ``start.custom_parameters.token`` when the stream was started with
  ``custom_parameters`` (``streaming_start``), else the ``token`` in voicecalld's
  ``client_state`` (which ``start`` echoes; see :func:`~.wire.encode_client_state`). The REST
  client must therefore put the token in ``client_state`` of the command that starts the stream.
- **Codecs.** ``PCMU`` is ``mulaw`` and ``PCMA`` is ``alaw``. Other codecs are refused at
  ``start``: a stateless reader cannot byte-swap big-endian L16 frames it cannot tell apart,
  and voicecalld always asks for ``stream_codec=PCMU``.
- Only the inbound track is audio for the application. Telnyx does not promise frame order
  (``sequence_number`` tells it); this stateless reader hands frames on as they arrive.

Any malformed input raises ``ValueError`` and nothing else.
"""

from __future__ import annotations

from binascii import a2b_base64, b2a_base64
from typing import Any

import orjson

from voicecalld.carriers.base import (
    StreamAudio,
    StreamDtmf,
    StreamEvent,
    StreamIgnored,
    StreamMark,
    StreamStarted,
    StreamStopped,
)
from voicecalld.carriers.forms import dtmf_digit, nonempty_str, sample_rate
from voicecalld.carriers.telnyx.wire import decode_client_state

__all__ = ["TelnyxStream"]

_ENCODINGS = {"PCMU": "mulaw", "PCMA": "alaw"}
_OTHER_TRACK = StreamIgnored("media")
_STOPPED = StreamStopped()
_CLEAR = orjson.dumps({"event": "clear"})


class TelnyxStream:
    """:class:`~voicecalld.carriers.base.StreamProtocol` for Telnyx media streaming (stateless)."""

    def parse(self, message: bytes) -> StreamEvent:
        try:
            frame = orjson.loads(message)
            event = frame["event"]
            if event == "media":
                media = frame["media"]
                if media.get("track", "inbound") != "inbound":
                    return _OTHER_TRACK
                return StreamAudio(a2b_base64(media["payload"], strict_mode=True))
            if event == "start":
                return _started(frame)
            if event == "dtmf":
                return StreamDtmf(dtmf_digit(frame["dtmf"]["digit"]))
            if event == "mark":
                return StreamMark(nonempty_str(frame["mark"]["name"], "mark.name"))
            if event == "stop":
                return _STOPPED
            return StreamIgnored(nonempty_str(event, "event"))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed Telnyx stream message: {error!r}") from None

    def media(self, stream_id: str, audio: bytes) -> bytes:
        payload = b2a_base64(audio, newline=False).decode("ascii")
        return orjson.dumps({"event": "media", "media": {"payload": payload}})

    def mark(self, stream_id: str, name: str) -> bytes:
        return orjson.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self, stream_id: str) -> bytes:
        return _CLEAR


def _started(frame: Any) -> StreamStarted:
    start = frame["start"]
    media_format = start["media_format"]
    encoding = _ENCODINGS.get(media_format["encoding"])
    if encoding is None:
        raise ValueError(f"unsupported Telnyx stream codec {media_format['encoding']!r:.40}")
    parameters = start.get("custom_parameters") or {}
    token = parameters.get("token") or decode_client_state(start.get("client_state")).token
    return StreamStarted(
        token=nonempty_str(token, "start token (custom_parameters or client_state)"),
        provider_call_id=nonempty_str(start["call_control_id"], "start.call_control_id"),
        stream_id=nonempty_str(frame["stream_id"], "stream_id"),
        encoding=encoding,
        sample_rate=sample_rate(media_format["sample_rate"]),
    )
