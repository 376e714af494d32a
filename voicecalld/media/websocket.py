"""RFC 6455 websocket frames for both roles, sans-I/O: bytes in, complete messages out.

This is the codec of the media fast path (carrier streams and the app bridge). It knows
nothing of sockets: the I/O shell (:mod:`voicecalld.media.connection`) feeds it what one
``recv`` returned and sends what it builds.

Invariants, and why:

- :meth:`Codec.receive_data` returns only *complete* messages, fragments reassembled, in
  order. Control frames never reach the caller: a ping is answered by a pong, a pong is
  ignored, a close frame is answered by ours. These answers wait in
  :meth:`Codec.data_to_send` for the shell; at most one pong (for the latest ping) and one
  close frame, so what the codec queues stays small whatever the peer sends.
- Memory is bounded by ``max_message_size``: a frame is refused (1009) from its header,
  before its payload is buffered, when it would take the message over the limit; control
  frames are at most 125 bytes. Input is buffered in a growing ``bytearray`` and only
  parsed once the pending frame is complete, so a peer trickling bytes costs linear time.
- Every violation fails the connection with the code RFC 6455 asks for: 1002 for framing
  (reserved bits, unknown opcode, wrong masking for the role, fragmented or oversized
  control frame, continuation without a start, a new data frame inside a fragmented
  message, non-minimal length, bad close payload), 1007 for invalid UTF-8 in a text
  message or close reason, 1009 for a message over the limit. Failing queues our close
  frame and moves to :attr:`State.CLOSED`.
- Once :attr:`State.CLOSED` (handshake done or connection failed) every further byte is
  ignored: nothing a peer sends after its close frame can produce a message.
- No extension is negotiated (the handshake never accepts one), so every RSV bit must be 0.
- Text messages are returned as UTF-8 ``bytes`` (validated, not decoded): the carrier JSON
  parsers above take bytes, and decoding to ``str`` only to encode again is wasted work.
  Outgoing text is trusted to be UTF-8 (it comes from ``orjson.dumps``).
- The server role sends unmasked frames and requires masked ones; the client role masks
  each frame with a fresh key and requires unmasked ones. Keys come from ``os.urandom``, as
  RFC 6455 asks (unpredictable keys, from a strong source), drawn 1,024 at a time: one
  ``os.urandom`` call per frame was a microsecond and a half, a tenth of a bridged frame's
  whole cost.

Example::

    codec = Codec(Role.SERVER)
    for message in codec.receive_data(received):
        handle(message.data, message.is_text)
    reply = codec.data_to_send()          # pongs, close answers: send them
    frame = codec.text(b'{"event":"media"}')
"""

from __future__ import annotations

import codecs
import enum
import os
import struct
from typing import NamedTuple, final

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "CloseCode",
    "Codec",
    "Message",
    "Role",
    "State",
]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
"""1 MiB: a 20 ms audio frame is a few hundred bytes; anything near this is not media."""

_MAX_CONTROL_PAYLOAD = 125
_MAX_CLOSE_REASON = _MAX_CONTROL_PAYLOAD - 2

_OP_CONTINUATION = 0x0
_OP_TEXT = 0x1
_OP_BINARY = 0x2
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA

_KEYS_DRAWN = 4 * 1024
"""Bytes of masking keys drawn from ``os.urandom`` at a time: 1,024 frames' worth."""

_MEDIUM = struct.Struct("!BBH")
_LARGE = struct.Struct("!BBQ")


class Role(enum.Enum):
    """Which end of the connection this codec is: it decides masking both ways."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """Where the closing handshake stands."""

    OPEN = "open"
    CLOSING = "closing"
    """We sent a close frame and wait for the peer's; messages still arrive meanwhile."""
    CLOSED = "closed"
    """Both close frames exchanged (ours may still sit in :meth:`Codec.data_to_send`), or
    the connection failed. Input is ignored from here on."""


_CLOSED = State.CLOSED  # a module global: one lookup less per received chunk


class CloseCode(enum.IntEnum):
    """The RFC 6455 status codes this project sends or reports."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    """Reported when the peer's close frame carried no code; never sent."""
    ABNORMAL = 1006
    """Reported when the TCP connection ended without a close frame; never sent."""
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


# Codes a peer may put in a close frame: the registered ones (as wsproto accepts them) and
# the ranges for libraries (3000-3999) and applications (4000-4999).
_REGISTERED_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013}
)


def _valid_close_code(code: int) -> bool:
    return code in _REGISTERED_CLOSE_CODES or 3000 <= code <= 4999


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _first_byte_errors(*, inside_message: bool) -> tuple[str | None, ...]:
    """Why each value of a frame's first byte is a protocol error, or None when it is not.

    The first byte holds FIN, the RSV bits and the opcode: looking its verdict up in a
    table built here once replaces five tests per frame on the hot path.
    """
    errors: list[str | None] = []
    for first_byte in range(256):
        opcode = first_byte & 0x0F
        if first_byte & 0x70:
            errors.append("reserved bits set")
        elif opcode in (_OP_CLOSE, _OP_PING, _OP_PONG):
            errors.append(None if first_byte & 0x80 else "fragmented control frame")
        elif opcode not in (_OP_CONTINUATION, _OP_TEXT, _OP_BINARY):
            errors.append("unknown opcode")
        elif opcode == _OP_CONTINUATION and not inside_message:
            errors.append("continuation without a message")
        elif opcode != _OP_CONTINUATION and inside_message:
            errors.append("new message inside a fragmented one")
        else:
            errors.append(None)
    return tuple(errors)


_ERRORS_BETWEEN_MESSAGES = _first_byte_errors(inside_message=False)
_ERRORS_INSIDE_MESSAGE = _first_byte_errors(inside_message=True)


class Message(NamedTuple):
    """One complete message: ``data`` is UTF-8 bytes when ``is_text``, else raw bytes."""

    data: bytes
    is_text: bool


# NamedTuple's generated __new__ is a Python function; calling tuple.__new__ directly builds
# the same object in a third of the time, and the hot path builds one per frame.
_new_message = tuple.__new__


# ``_ONES[w]`` is ``w`` big-endian 32-bit words of value 1: multiplying a 4-byte key by it
# repeats the key ``w`` times in one C-level multiplication (payloads up to 1 KiB; ~130 KB).
_ONES = [int.from_bytes(b"\x00\x00\x00\x01" * words) for words in range(257)]


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same).

    Done as one big-integer XOR over the whole payload, a few C-level passes instead of a
    Python loop per byte: the key repeated to whole words, shifted right to drop the bytes
    past the payload's end (big-endian, so the key stays aligned on the first byte).
    """
    n = len(payload)
    words = (n + 3) >> 2
    if words < len(_ONES):
        repeated = int.from_bytes(key) * _ONES[words]
    else:
        repeated = int.from_bytes(key * words)
    return (int.from_bytes(payload) ^ (repeated >> ((words * 4 - n) * 8))).to_bytes(n)


@final
class Codec:
    """The frame codec of one websocket connection (see the module docstring)."""

    __slots__ = (
        "_buffer",
        "_close_by_peer",
        "_close_code",
        "_close_reason",
        "_first_byte_errors",
        "_fragment_opcode",
        "_fragment_size",
        "_fragments",
        "_key_at",
        "_keys",
        "_masked_in",
        "_masked_out",
        "_max_message_size",
        "_need",
        "_pending_close",
        "_pending_pong",
        "_state",
        "_utf8",
    )

    def __init__(self, role: Role, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._masked_in = role is Role.SERVER
        self._masked_out = role is Role.CLIENT
        self._max_message_size = max_message_size
        self._state = State.OPEN
        self._buffer = bytearray()
        self._need = 0
        self._fragment_opcode = 0
        self._first_byte_errors = _ERRORS_BETWEEN_MESSAGES
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        self._pending_pong: bytes | None = None
        self._pending_close = b""
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_by_peer = False
        self._keys = b""
        self._key_at = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def close_code(self) -> int | None:
        """The code of the close frame that started the closing handshake, whichever side
        sent it (ours when we failed the connection); ``None`` while open."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def closed_by_peer(self) -> bool:
        """True when the peer's close frame started the closing handshake."""
        return self._close_by_peer

    # -- incoming --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message]:
        """Feed bytes from the peer; return every message they complete, in order."""
        buf = self._input(data) if self._buffer or self._state is _CLOSED else data
        if buf is None:
            return []
        messages: list[Message] = []
        size = len(buf)
        pos = 0
        masked_in = 0x80 if self._masked_in else 0
        need = 2  # bytes the frame at ``pos`` needs before parsing can go on
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            error = self._first_byte_errors[b0]
            if error is not None:
                return self._failed(messages, CloseCode.PROTOCOL_ERROR, error)
            if b1 & 0x80 != masked_in:
                return self._failed(messages, CloseCode.PROTOCOL_ERROR, "wrong masking for role")
            if length > _MAX_CONTROL_PAYLOAD and opcode >= _OP_CLOSE:
                return self._failed(messages, CloseCode.PROTOCOL_ERROR, "control frame too long")

            start = pos + 2
            if length == 126:
                if size - start < 2:
                    need = 4
                    break
                length = (buf[start] << 8) | buf[start + 1]
                start += 2
                if length < 126:
                    return self._failed(messages, CloseCode.PROTOCOL_ERROR, "non-minimal length")
            elif length == 127:
                if size - start < 8:
                    need = 10
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
                if length < 0x10000 or length >> 63:
                    return self._failed(messages, CloseCode.PROTOCOL_ERROR, "bad 64-bit length")
            if opcode < _OP_CLOSE and self._fragment_size + length > self._max_message_size:
                return self._failed(messages, CloseCode.MESSAGE_TOO_BIG, "message too big")
            if masked_in:
                start += 4
            end = start + length
            if end > size:
                need = end - pos
                break
            payload = _mask(buf[start:end], buf[start - 4 : start]) if masked_in else buf[start:end]
            pos = end

            if b0 == 0x80 | _OP_TEXT:
                if not payload.isascii() and not _is_utf8(payload):
                    return self._failed(messages, CloseCode.INVALID_DATA, "invalid UTF-8")
                messages.append(_new_message(Message, (payload, True)))
            elif b0 == 0x80 | _OP_BINARY:
                messages.append(_new_message(Message, (payload, False)))
            elif not self._on_other_frame(messages, opcode, payload, b0 & 0x80):
                return messages

        if pos < size:
            self._buffer += memoryview(buf)[pos:]
            self._need = need
        return messages

    def _input(self, data: bytes) -> bytes | None:
        """What to parse: ``data`` after what was kept, or None while the pending frame
        (whose size the last pass learned) is still incomplete, or the codec is closed."""
        if self._state is State.CLOSED:
            return None
        self._buffer += data
        if len(self._buffer) < self._need:
            return None
        buf = bytes(self._buffer)
        self._buffer.clear()
        return buf

    def _on_other_frame(
        self, messages: list[Message], opcode: int, payload: bytes, fin: int
    ) -> bool:
        """A fragment or a control frame; False when the codec stopped reading (closed)."""
        if opcode < _OP_CLOSE:
            if not self._add_fragment(opcode, payload, fin):
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return False
            if fin:
                messages.append(self._take_fragments())
        elif opcode == _OP_PING:
            if self._state is State.OPEN:
                self._pending_pong = payload
        elif opcode == _OP_CLOSE:
            self._on_close(payload)
            return False
        # a pong needs nothing: we send no pings that wait for one
        return True

    def _add_fragment(self, opcode: int, payload: bytes, fin: int) -> bool:
        """Keep one fragment of a fragmented message; False when its text is not UTF-8.

        Text is checked fragment by fragment (an incremental decoder keeps a split code
        point for the next one) so a bad message fails as soon as it shows, not at its end.
        """
        if opcode != _OP_CONTINUATION:
            self._fragment_opcode = opcode
            self._first_byte_errors = _ERRORS_INSIDE_MESSAGE
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == _OP_TEXT else None
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, final=bool(fin))
            except UnicodeDecodeError:
                return False
        return True

    def _take_fragments(self) -> Message:
        message = Message(b"".join(self._fragments), self._fragment_opcode == _OP_TEXT)
        self._fragments = []
        self._fragment_size = 0
        self._fragment_opcode = 0
        self._first_byte_errors = _ERRORS_BETWEEN_MESSAGES
        self._utf8 = None
        return message

    def _on_close(self, payload: bytes) -> None:
        """The peer's close frame: answer it (unless it answers ours), then stop reading."""
        code = int.from_bytes(payload[:2], "big") if payload else CloseCode.NO_STATUS
        if len(payload) == 1 or (payload and not _valid_close_code(code)):
            self._fail(CloseCode.PROTOCOL_ERROR, "invalid close code")
            return
        if not _is_utf8(payload[2:]):
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in close reason")
            return
        if self._state is State.OPEN:
            self._close_code = code
            self._close_reason = payload[2:].decode()
            self._close_by_peer = True
            self._pending_close = self._frame(0x80 | _OP_CLOSE, payload[:2])
        self._state = State.CLOSED
        self._buffer.clear()

    def _failed(self, messages: list[Message], code: CloseCode, reason: str) -> list[Message]:
        """Fail the connection; the messages completed before the bad frame still count."""
        self._fail(code, reason)
        return messages

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection: queue our close frame (if we had not sent one) and stop."""
        if self._state is State.OPEN:
            self._pending_close = self.close(code, reason)
        self._state = State.CLOSED
        self._buffer.clear()
        self._fragments = []

    # -- outgoing --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Frames the codec decided to send since the last call: one pong answering the
        latest ping (RFC 6455 lets earlier ones go unanswered, so a peer pinging without
        reading cannot make us queue more than one), then our close frame, if any."""
        if self._pending_pong is None and not self._pending_close:
            return b""
        data = self._pending_close
        if self._pending_pong is not None:
            data = self._frame(0x80 | _OP_PONG, self._pending_pong) + data
        self._pending_pong = None
        self._pending_close = b""
        return data

    def text(self, data: bytes) -> bytes:
        """One final text frame carrying ``data`` (UTF-8, not checked)."""
        return self._frame(0x80 | _OP_TEXT, data)

    def binary(self, data: bytes) -> bytes:
        """One final binary frame carrying ``data``."""
        return self._frame(0x80 | _OP_BINARY, data)

    def ping(self, data: bytes = b"") -> bytes:
        """A ping frame; the peer answers with a pong that this codec ignores."""
        if len(data) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        return self._frame(0x80 | _OP_PING, data)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake: our close frame, or ``b""`` if one was already sent.

        The reason is cut to 123 bytes on a character boundary, as a close frame must fit in
        125 bytes.
        """
        if not _valid_close_code(code):
            raise ValueError(f"{code} cannot be sent in a close frame")
        if self._state is not State.OPEN:
            return b""
        self._pending_pong = None  # nothing may follow our close frame
        encoded = reason.encode()[:_MAX_CLOSE_REASON]
        encoded = encoded.decode(errors="ignore").encode()
        self._state = State.CLOSING
        self._close_code = code
        self._close_reason = encoded.decode()
        return self._frame(0x80 | _OP_CLOSE, code.to_bytes(2, "big") + encoded)

    def _frame(self, first_byte: int, payload: bytes) -> bytes:
        n = len(payload)
        if self._masked_out:
            at = self._key_at
            if at == len(self._keys):
                self._keys, at = os.urandom(_KEYS_DRAWN), 0
            self._key_at = at + 4
            key = self._keys[at : at + 4]
            if n < 126:
                return bytes((first_byte, 0x80 | n)) + key + _mask(payload, key)
            if n < 0x10000:
                return _MEDIUM.pack(first_byte, 0xFE, n) + key + _mask(payload, key)
            return _LARGE.pack(first_byte, 0xFF, n) + key + _mask(payload, key)
        if n < 126:
            return bytes((first_byte, n)) + payload
        if n < 0x10000:
            return _MEDIUM.pack(first_byte, 126, n) + payload
        return _LARGE.pack(first_byte, 127, n) + payload
