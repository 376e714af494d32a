"""Twilio Media Streams messages, read and written (pure, on the media hot path).

Twilio sends text JSON frames only (``connected``, ``start``, ``media``, ``dtmf``, ``mark``,
``stop``); audio is base64 μ-law 8 kHz with no header. ``<Connect><Stream>`` is bidirectional
and streams the inbound track only; any other track is ignored rather than played back to the
application. The stream token voicecalld issued arrives as ``start.customParameters.token``
(the ``<Parameter>`` of the TwiML answer), because Stream URLs take no query string.

Cost: one ``orjson.loads`` and one base64 decode per media frame, no other copy of the audio.
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

__all__ = ["TwilioStream"]

_ENCODINGS = {"audio/x-mulaw": "mulaw"}
_OTHER_TRACK = StreamIgnored("media")
_STOPPED = StreamStopped()


class TwilioStream:
    """:class:`~voicecalld.carriers.base.StreamProtocol` for Twilio Media Streams (stateless)."""

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
            raise ValueError(f"malformed Twilio stream message: {error!r}") from None

    def media(self, stream_id: str, audio: bytes) -> bytes:
        payload = b2a_base64(audio, newline=False).decode("ascii")
        return orjson.dumps(
            {"event": "media", "streamSid": stream_id, "media": {"payload": payload}}
        )

    def mark(self, stream_id: str, name: str) -> bytes:
        return orjson.dumps({"event": "mark", "streamSid": stream_id, "mark": {"name": name}})

    def clear(self, stream_id: str) -> bytes:
        return orjson.dumps({"event": "clear", "streamSid": stream_id})


def _started(frame: Any) -> StreamStarted:
    start = frame["start"]
    media_format = start["mediaFormat"]
    encoding = _ENCODINGS.get(media_format["encoding"])
    if encoding is None:
        raise ValueError(f"unsupported Twilio stream encoding {media_format['encoding']!r:.40}")
    return StreamStarted(
        token=nonempty_str(start["customParameters"]["token"], "start.customParameters.token"),
        provider_call_id=nonempty_str(start["callSid"], "start.callSid"),
        stream_id=nonempty_str(frame.get("streamSid") or start["streamSid"], "streamSid"),
        encoding=encoding,
        sample_rate=sample_rate(media_format["sampleRate"]),
    )
