"""Plivo audio-stream messages, read and written (pure, on the media hot path).

From Plivo: ``start``, ``media``, ``dtmf``, ``playedStream`` (a support article calls it
``played``: both are read), ``clearedAudio``; no ``stop`` is documented (the socket close ends a
stream) but one is accepted. To Plivo: ``playAudio``, ``checkpoint``, ``clearAudio``.

- voicecalld's ``<Stream>`` answer asks for :data:`CONTENT_TYPE` at :data:`SAMPLE_RATE`
  (μ-law 8 kHz), so that is what ``playAudio`` sends. ``audio/x-l16`` on ``start`` is read as
  ``pcm16`` with no byte swap: Plivo's own stream code (plivo-labs/agent-transport,
  ``audio_stream/protocol.rs``) reads and writes L16 little-endian, although RFC 2586 calls
  ``audio/L16`` network byte order.
- The token arrives in ``extra_headers``, the ``extraHeaders`` of the answer, echoed as
  ``k=v`` pairs. The docs show ``,`` in the element and ``;`` in the echo: both separate.

Cost: one ``orjson.loads`` and one base64 decode per media frame. Any malformed input raises
``ValueError`` and nothing else.
"""

from __future__ import annotations

import re
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

__all__ = ["CONTENT_TYPE", "SAMPLE_RATE", "PlivoStream"]

CONTENT_TYPE = "audio/x-mulaw"
SAMPLE_RATE = 8000

_ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-l16": "pcm16"}
_HEADER_SEPARATOR = re.compile(r"[,;]")
_OTHER_TRACK = StreamIgnored("media")
_STOPPED = StreamStopped()


class PlivoStream:
    """:class:`~voicecalld.carriers.base.StreamProtocol` for Plivo audio streams (stateless)."""

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
            if event in ("playedStream", "played"):
                return StreamMark(nonempty_str(frame["name"], "name"))
            if event == "stop":
                return _STOPPED
            return StreamIgnored(nonempty_str(event, "event"))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed Plivo stream message: {error!r}") from None

    def media(self, stream_id: str, audio: bytes) -> bytes:
        payload = b2a_base64(audio, newline=False).decode("ascii")
        media = {"contentType": CONTENT_TYPE, "sampleRate": SAMPLE_RATE, "payload": payload}
        return orjson.dumps({"event": "playAudio", "media": media})

    def mark(self, stream_id: str, name: str) -> bytes:
        return orjson.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})

    def clear(self, stream_id: str) -> bytes:
        return orjson.dumps({"event": "clearAudio", "streamId": stream_id})


def _started(frame: Any) -> StreamStarted:
    start = frame["start"]
    media_format = start["mediaFormat"]
    encoding = _ENCODINGS.get(media_format["encoding"])
    if encoding is None:
        raise ValueError(f"unsupported Plivo stream encoding {media_format['encoding']!r:.40}")
    headers = _extra_headers(nonempty_str(frame["extra_headers"], "extra_headers"))
    return StreamStarted(
        token=nonempty_str(headers.get("token"), "extra_headers token"),
        provider_call_id=nonempty_str(start["callId"], "start.callId"),
        stream_id=nonempty_str(start["streamId"], "start.streamId"),
        encoding=encoding,
        sample_rate=sample_rate(media_format["sampleRate"]),
    )


def _extra_headers(text: str) -> dict[str, str]:
    pairs = (part.partition("=") for part in _HEADER_SEPARATOR.split(text))
    return {name.strip(): value.strip() for name, _, value in pairs}
