"""The RFC 6455 codec against wsproto as the oracle, both ways and both roles.

wsproto encodes what our codec must decode (fragments, pings between fragments, every length
encoding, random byte splits), decodes what our codec encodes, and judges malformed input
alongside it. Frames wsproto cannot produce (bad RSV bits, bad lengths, bad UTF-8) are built
by hand here, with a masking helper of the test's own.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from voicecalld.media.websocket import CloseCode, Codec, Message, Role, State

# -- helpers -------------------------------------------------------------------------------

SIZES = [0, 1, 2, 3, 4, 5, 124, 125, 126, 127, 300, 65535, 65536, 70000]


def payload_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def text_of(size: int, seed: int) -> str:
    """Text of about ``size`` UTF-8 bytes mixing 1- to 4-byte characters."""
    rng = random.Random(seed)
    alphabet = 'aZ0 {}"é€😀\u0800\uffff'
    chars: list[str] = []
    length = 0
    while length < size:
        char = rng.choice(alphabet)
        chars.append(char)
        length += len(char.encode())
    return "".join(chars)


def frame(first: int, payload: bytes, *, key: bytes | None = b"\x01\x02\x03\x04") -> bytes:
    """A frame built without our codec: ``first`` is the FIN/RSV/opcode byte."""
    n = len(payload)
    mask_bit = 0x80 if key is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if key is None:
        return head + payload
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def chunks(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes, cycling through them."""
    pos = 0
    index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        yield data[pos : pos + size]
        pos += size
        index += 1


def feed(codec: Codec, data: bytes, sizes: Sequence[int] = ()) -> list[Message]:
    messages: list[Message] = []
    for piece in chunks(data, sizes):
        messages += codec.receive_data(piece)
    return messages


def wsproto_read(conn: Connection, data: bytes, sizes: Sequence[int] = ()) -> list[object]:
    """Feed wsproto; return its events with partial messages joined into Message tuples."""
    events: list[object] = []
    parts: list[bytes] = []
    for piece in chunks(data, sizes):
        conn.receive_data(piece)
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                data_part = event.data
                parts.append(data_part.encode() if isinstance(data_part, str) else bytes(data_part))
                if event.message_finished:
                    events.append(Message(b"".join(parts), isinstance(event, TextMessage)))
                    parts = []
            else:
                events.append(event)
    return events


def peer_of(role: Role) -> Connection:
    return Connection(ConnectionType.CLIENT if role is Role.SERVER else ConnectionType.SERVER)


# -- strategies ----------------------------------------------------------------------------

Op = tuple[str, str | bytes, list[int]]

sizes = st.sampled_from(SIZES) | st.integers(0, 400)
splits = st.lists(st.integers(1, 3000), max_size=8) | st.lists(st.integers(1, 3), max_size=3)


@st.composite
def scripts(draw: st.DrawFn) -> list[Op]:
    """Operations: ("text", str, cuts), ("binary", bytes, cuts), ("ping", bytes, [])."""
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "binary", "ping"]))
        seed = draw(st.integers(0, 2**32))
        if kind == "ping":
            ops.append(("ping", payload_of(draw(st.integers(0, 125)), seed), []))
            continue
        size = draw(sizes)
        body: str | bytes = text_of(size, seed) if kind == "text" else payload_of(size, seed)
        cuts = draw(st.lists(st.integers(0, size), max_size=3, unique=True))
        ops.append((kind, body, sorted(cuts)))
    return ops


def pieces(body: str | bytes, cuts: list[int]) -> list[str | bytes]:
    return [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]


def data_event(part: str | bytes, last: bool) -> TextMessage | BytesMessage:
    if isinstance(part, str):
        return TextMessage(part, message_finished=last)
    return BytesMessage(part, message_finished=last)


def expected_message(body: str | bytes) -> Message:
    if isinstance(body, str):
        return Message(body.encode(), True)
    return Message(body, False)


# -- wsproto encodes, we decode ------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
@given(script=scripts(), split=splits, ping_between=st.booleans(), close=st.booleans())
def test_we_decode_what_wsproto_encodes(
    role: Role,
    script: list[Op],
    split: list[int],
    ping_between: bool,
    close: bool,
) -> None:
    sender = peer_of(role)
    stream = b""
    expected: list[Message] = []
    pings: list[bytes] = []
    for kind, body, cuts in script:
        if kind == "ping":
            assert isinstance(body, bytes)
            stream += sender.send(Ping(body))
            pings.append(body)
            continue
        parts = pieces(body, cuts)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            stream += sender.send(data_event(part, last))
            if ping_between and not last:
                stream += sender.send(Ping(b"between"))
                pings.append(b"between")
        expected.append(expected_message(body))
    if close:
        stream += sender.send(CloseConnection(4321, "done ✓"))

    codec = Codec(role, max_message_size=1 << 20)
    assert feed(codec, stream, split) == expected
    # the oracle reads the same bytes the same way (fed whole: it is slow on tiny pieces)
    oracle = Connection(ConnectionType.SERVER if role is Role.SERVER else ConnectionType.CLIENT)
    assert [e for e in wsproto_read(oracle, stream) if isinstance(e, Message)] == expected

    # our answers: a pong for the latest ping (the earlier ones may go unanswered), then
    # the close answer
    answers = wsproto_read(sender, codec.data_to_send())
    assert [e.payload for e in answers if isinstance(e, Pong)] == pings[-1:]
    if close:
        assert codec.state is State.CLOSED
        assert (codec.close_code, codec.close_reason, codec.closed_by_peer) == (
            4321,
            "done ✓",
            True,
        )
        assert isinstance(answers[-1], CloseConnection)
        assert answers[-1].code == 4321
    else:
        assert codec.state is State.OPEN
        assert codec.close_code is None


# -- we encode, wsproto decodes ------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
@given(script=scripts(), split=splits, close_code=st.sampled_from([1000, 1001, 3000, 4999]))
def test_wsproto_decodes_what_we_encode(
    role: Role, script: list[Op], split: list[int], close_code: int
) -> None:
    codec = Codec(role)
    stream = b""
    expected: list[object] = []
    for kind, body, _ in script:
        if kind == "ping":
            assert isinstance(body, bytes)
            stream += codec.ping(body)
            expected.append(Ping(body))
        elif isinstance(body, str):
            stream += codec.text(body.encode())
            expected.append(Message(body.encode(), True))
        else:
            assert isinstance(body, bytes)
            stream += codec.binary(body)
            expected.append(Message(body, False))
    stream += codec.close(close_code, "bye ✓")
    expected.append(CloseConnection(close_code, "bye ✓"))

    oracle = peer_of(role)
    assert wsproto_read(oracle, stream, [size * 64 for size in split]) == expected
    assert (codec.state, codec.close_code) == (State.CLOSING, close_code)

    # the oracle answers our close; the handshake completes on our side
    assert feed(codec, oracle.send(CloseConnection(close_code))) == []
    assert codec.state is State.CLOSED
    assert (codec.close_code, codec.closed_by_peer) == (close_code, False)


@pytest.mark.parametrize("size", SIZES)
def test_server_frames_are_byte_identical_to_wsproto(size: int) -> None:
    body = payload_of(size, size)
    oracle = Connection(ConnectionType.SERVER)
    assert Codec(Role.SERVER).binary(body) == oracle.send(BytesMessage(body))
    text = text_of(size, size)
    assert Codec(Role.SERVER).text(text.encode()) == oracle.send(TextMessage(text))


def test_client_frames_are_masked_with_fresh_keys() -> None:
    codec = Codec(Role.CLIENT)
    first, second = codec.binary(b"\x00" * 8), codec.binary(b"\x00" * 8)
    assert first[1] & 0x80
    assert second[1] & 0x80
    assert first[2:6] != second[2:6]  # the key (and so the masked zeros) differ
    assert first[6:] == first[2:6] * 2


# -- one frame at a time -------------------------------------------------------------------


def test_messages_before_an_incomplete_frame_come_out_at_once() -> None:
    codec = Codec(Role.SERVER)
    whole = frame(0x81, b"one") + frame(0x82, b"two")
    tail = frame(0x81, b"x" * 1000)
    assert codec.receive_data(whole + tail[:500]) == [Message(b"one", True), Message(b"two", False)]
    assert codec.receive_data(tail[500:999]) == []
    assert codec.receive_data(tail[999:]) == [Message(b"x" * 1000, True)]


def test_a_code_point_split_across_fragments_is_valid() -> None:
    euro = "€".encode()
    codec = Codec(Role.SERVER)
    stream = frame(0x01, b"a" + euro[:1]) + frame(0x00, euro[1:2]) + frame(0x80, euro[2:])
    assert feed(codec, stream, [1]) == [Message(b"a" + euro, True)]


def test_each_batch_answers_only_its_latest_ping() -> None:
    codec = Codec(Role.SERVER)
    assert codec.receive_data(frame(0x89, b"1") + frame(0x89, b"2")) == []
    assert codec.data_to_send() == b"\x8a\x012"
    assert codec.data_to_send() == b""
    codec.receive_data(frame(0x89, b"3") + frame(0x88, struct.pack("!H", 1001)))
    assert codec.data_to_send() == b"\x8a\x013" + b"\x88\x02\x03\xe9"


def test_pong_is_ignored_and_ping_after_our_close_is_not_answered() -> None:
    codec = Codec(Role.SERVER)
    assert codec.receive_data(frame(0x8A, b"pong")) == []
    assert codec.data_to_send() == b""
    codec.close()
    assert codec.receive_data(frame(0x89, b"ping") + frame(0x81, b"late")) == [
        Message(b"late", True)
    ]
    assert codec.data_to_send() == b""


def test_close_without_code_is_reported_1005_and_answered_empty() -> None:
    codec = Codec(Role.SERVER)
    codec.receive_data(frame(0x88, b""))
    assert (codec.state, codec.close_code, codec.close_reason) == (State.CLOSED, 1005, "")
    assert codec.data_to_send() == b"\x88\x00"


def test_nothing_after_the_close_frame_is_read() -> None:
    codec = Codec(Role.SERVER)
    closing = frame(0x88, struct.pack("!H", 1000))
    assert codec.receive_data(frame(0x81, b"a") + closing + frame(0x81, b"b")) == [
        Message(b"a", True)
    ]
    assert codec.receive_data(frame(0x81, b"c")) == []


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    codec = Codec(Role.SERVER)
    data = codec.close(1000, "€" * 60)
    events = wsproto_read(Connection(ConnectionType.CLIENT), data)
    assert events == [CloseConnection(1000, "€" * 41)]  # 123 bytes hold 41 euros
    assert codec.close() == b""  # only one close frame, ever


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 5000])
def test_we_refuse_to_send_a_reserved_close_code(code: int) -> None:
    with pytest.raises(ValueError, match="close frame"):
        Codec(Role.SERVER).close(code)


def test_ping_payload_is_bounded() -> None:
    with pytest.raises(ValueError, match="125"):
        Codec(Role.CLIENT).ping(b"x" * 126)


# -- protocol errors -----------------------------------------------------------------------

long_ping = bytes((0x89, 0x80 | 126)) + struct.pack("!H", 126) + b"\x00" * 4 + b"\x00" * 126

PROTOCOL_ERRORS = {
    "rsv1": frame(0xC1, b"x"),
    "rsv2": frame(0xA1, b"x"),
    "rsv3": frame(0x91, b"x"),
    "opcode 3": frame(0x83, b"x"),
    "opcode 0xB": frame(0x8B, b""),
    "unmasked client frame": frame(0x81, b"x", key=None),
    "control frame over 125": long_ping,
    "fragmented ping": frame(0x09, b"x"),
    "fragmented close": frame(0x08, struct.pack("!H", 1000)),
    "continuation without start": frame(0x80, b"x"),
    "new message mid-fragment": frame(0x01, b"a") + frame(0x81, b"b"),
    "binary mid-fragment": frame(0x02, b"a") + frame(0x82, b"b"),
    "one-byte close": frame(0x88, b"\x03"),
    "close code 999": frame(0x88, struct.pack("!H", 999)),
    "close code 1004": frame(0x88, struct.pack("!H", 1004)),
    "close code 1005": frame(0x88, struct.pack("!H", 1005)),
    "close code 1006": frame(0x88, struct.pack("!H", 1006)),
    "close code 1015": frame(0x88, struct.pack("!H", 1015)),
    "close code 2999": frame(0x88, struct.pack("!H", 2999)),
    "close code 5000": frame(0x88, struct.pack("!H", 5000)),
    "16-bit length for 125": bytes((0x81, 0xFE)) + struct.pack("!H", 125) + b"\0" * 129,
    "64-bit length for 65535": bytes((0x81, 0xFF)) + struct.pack("!Q", 65535) + b"\0" * 4,
    "64-bit length with top bit": bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"\0" * 4,
}

INVALID_DATA = {
    "bad UTF-8 text": frame(0x81, b"\xff"),
    "surrogate in text": frame(0x81, b"\xed\xa0\x80"),
    "overlong encoding": frame(0x81, b"\xc0\xaf"),
    "truncated code point at the end": frame(0x81, "€".encode()[:2]),
    "bad first fragment": frame(0x01, b"ok \xff"),
    "truncated code point in the last fragment": frame(0x01, b"a") + frame(0x80, b"\xe2\x82"),
    "bad close reason": frame(0x88, struct.pack("!H", 1000) + b"\xff"),
}


def assert_failed(codec: Codec, code: int) -> None:
    assert codec.state is State.CLOSED
    assert (codec.close_code, codec.closed_by_peer) == (code, False)
    [close] = wsproto_read(Connection(ConnectionType.CLIENT), codec.data_to_send())
    assert isinstance(close, CloseConnection)
    assert close.code == code


@pytest.mark.parametrize(
    ("data", "code"),
    [pytest.param(data, 1002, id=name) for name, data in PROTOCOL_ERRORS.items()]
    + [pytest.param(data, 1007, id=name) for name, data in INVALID_DATA.items()],
)
def test_protocol_errors_fail_with_the_right_code_as_wsproto_does(data: bytes, code: int) -> None:
    codec = Codec(Role.SERVER)
    good = frame(0x81, b"before")
    assert codec.receive_data(good + data + frame(0x81, b"after")) == [Message(b"before", True)]
    assert_failed(codec, code)
    assert codec.receive_data(frame(0x81, b"ignored")) == []  # a failed codec reads nothing

    [*_, verdict] = wsproto_read(Connection(ConnectionType.SERVER), good + data)
    assert isinstance(verdict, CloseConnection)
    assert verdict.code == code


def test_masked_frame_to_a_client_is_a_protocol_error() -> None:
    codec = Codec(Role.CLIENT)
    assert codec.receive_data(frame(0x81, b"x")) == []
    assert_failed(codec, 1002)


def test_a_message_over_the_limit_fails_from_its_header() -> None:
    codec = Codec(Role.SERVER, max_message_size=1000)
    # only the header of a 1 GiB frame: refused before any payload is buffered
    assert codec.receive_data(bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 30)) == []
    assert_failed(codec, 1009)


def test_fragments_adding_up_over_the_limit_fail() -> None:
    codec = Codec(Role.SERVER, max_message_size=1000)
    messages = feed(codec, frame(0x81, b"x" * 1000) + frame(0x02, b"y" * 600))
    assert messages == [Message(b"x" * 1000, True)]  # exactly the limit is fine
    assert codec.state is State.OPEN
    assert codec.receive_data(frame(0x00, b"y" * 401)) == []
    assert_failed(codec, 1009)


def test_a_failure_while_closing_sends_nothing_more() -> None:
    codec = Codec(Role.SERVER)
    ours = codec.close(4000)
    assert ours
    codec.receive_data(frame(0xC1, b"x"))
    assert codec.state is State.CLOSED
    assert (codec.close_code, codec.data_to_send()) == (4000, b"")


def test_trickled_input_is_buffered_once() -> None:
    """One byte at a time still parses (and the buffer never re-parses a partial frame)."""
    body = os.urandom(5000)
    codec = Codec(Role.SERVER)
    assert feed(codec, frame(0x82, body) * 2, [1]) == [Message(body, False)] * 2


@given(
    script=scripts(),
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=3
    ),
)
def test_corrupted_streams_get_the_same_verdict_as_wsproto(
    script: list[Op], flips: list[tuple[float, int]]
) -> None:
    """Flip bits in a valid stream: we deliver the same messages and fail with the same code.

    The one allowed difference: wsproto checks the UTF-8 of a text frame while its payload
    is still arriving, we check it once the frame is complete, so for a stream that ends
    inside a bad text frame wsproto has already said 1007 and we have not said anything.
    """
    sender = Connection(ConnectionType.CLIENT)
    stream = bytearray()
    for kind, body, cuts in script:
        if kind == "ping":
            stream += sender.send(Ping(body))  # type: ignore[arg-type]
            continue
        parts = pieces(body, cuts)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            stream += sender.send(data_event(part, last))
    stream += sender.send(CloseConnection(1000))
    for where, bit in flips:
        stream[int(where * len(stream))] ^= 1 << bit

    codec = Codec(Role.SERVER, max_message_size=1 << 62)  # wsproto has no size limit
    messages = codec.receive_data(bytes(stream))
    events = wsproto_read(Connection(ConnectionType.SERVER), bytes(stream))
    assert messages == [e for e in events if isinstance(e, Message)]
    verdicts = [e.code for e in events if isinstance(e, CloseConnection)]
    verdict = verdicts[0] if verdicts else None
    if (codec.close_code, verdict) != (None, CloseCode.INVALID_DATA):
        assert codec.close_code == verdict
