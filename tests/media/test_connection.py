"""The trio shell over real loopback sockets, against trio-websocket as the other end."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_websocket

from voicecalld.media.connection import ConnectionClosed, WebSocket, accept, connect, refuse
from voicecalld.media.handshake import HandshakeError, client_request, head_length, parse_request
from voicecalld.media.websocket import Codec, Message, Role, State

# A self-signed certificate for localhost and 127.0.0.1, valid 2000-2100, made for these
# tests with `openssl ca -selfsign`; it protects nothing.
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4tU+GFrapiqapMcS
35/FfibdD8V1MqtOjoFG1n6c9HyhRANCAATYs73G5e+u8NWpHoXSTQ4s2cOX9EC3
LiJy1TNoc7y0VdpQydyfTroWY+sdX/2WjinLY0QdtDFbxd1R0vYkaXQR
-----END PRIVATE KEY-----
"""
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBaDCCAQ2gAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNizvcbl767w1ake
hdJNDizZw5f0QLcuInLVM2hzvLRV2lDJ3J9OuhZj6x1f/ZaOKctjRB20MVvF3VHS
9iRpdBGjTjBMMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAPBgNVHRMBAf8E
BTADAQH/MB0GA1UdDgQWBBRkg7Ebi7CQ2L8dSSqoFd4K+LV1pjAKBggqhkjOPQQD
AgNJADBGAiEAnwDd24TfZBK5rj8ohDZaDefS5iEeBgZzTeGnsMmGbP4CIQDrYeld
nBcObw0yQCkAnjys7WQrGeUHpqG3t0xOfcvhGw==
-----END CERTIFICATE-----
"""

Handler = Callable[[WebSocket], Awaitable[None]]
SIZES = [0, 1, 125, 126, 65535, 65536, 200_000]


@pytest.fixture
def server_tls(tmp_path: Path) -> ssl.SSLContext:
    (tmp_path / "key.pem").write_text(TEST_KEY)
    (tmp_path / "cert.pem").write_text(TEST_CERT)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.fixture
def client_tls() -> ssl.SSLContext:
    return ssl.create_default_context(cadata=TEST_CERT)


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """What the front door does: read up to the end of the request head."""
    received = b""
    while (length := head_length(received)) is None:
        data = await stream.receive_some(4096)
        assert data, "client left before its request head ended"
        received += data
    return received[:length], received[length:]


async def serve_ours(
    nursery: trio.Nursery,
    handler: Handler,
    tls: ssl.SSLContext | None = None,
    *,
    max_buffer: int = 65536,
    close_timeout: float = 5.0,
    send_buffer: int = 0,
) -> int:
    """Serve ``handler`` on our server side; return the port."""

    async def on_connection(stream: trio.abc.Stream) -> None:
        head, leftover = await read_head(stream)
        try:
            request = parse_request(head)
        except HandshakeError as refused:
            await refuse(stream, refused.status, refused.message, refused.headers)
            return
        if send_buffer:  # a fixed kernel buffer (no autotuning) fills when the peer stalls
            assert isinstance(stream, trio.SocketStream)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        ws = await accept(
            stream, request, leftover, max_buffer=max_buffer, close_timeout=close_timeout
        )
        async with ws:
            await handler(ws)

    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = tcp[0].socket.getsockname()[1]
    if tls is None:
        await nursery.start(trio.serve_listeners, on_connection, tcp)
    else:
        tls_listeners = [trio.SSLListener(listener, tls) for listener in tcp]
        await nursery.start(trio.serve_listeners, on_connection, tls_listeners)
    return port


@asynccontextmanager
async def trio_websocket_client(
    port: int, tls: ssl.SSLContext | None = None, *, max_message_size: int = 1 << 20
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """trio-websocket as the client, over a stream this test owns.

    trio-websocket leaves its socket open when the server closes first (its reader stops
    at end of stream and its ``aclose`` returns early once closed), so the stream is
    closed here rather than left to the garbage collector's ResourceWarning.
    """
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
    try:
        async with trio.open_nursery() as nursery:
            client = await trio_websocket.wrap_client_stream(
                nursery, stream, "127.0.0.1", "/media/mock", max_message_size=max_message_size
            )
            yield client
            await client.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


def close_code(closed: trio_websocket.ConnectionClosed) -> tuple[int, str | None]:
    assert closed.reason is not None
    return closed.reason.code, closed.reason.reason


async def echo_until_closed(ws: WebSocket, closes: list[ConnectionClosed]) -> None:
    try:
        while True:
            for message in await ws.receive_batch():
                if message.is_text:
                    ws.send_text(message.data)
                else:
                    ws.send_binary(message.data)
    except ConnectionClosed as closed:
        closes.append(closed)


async def open_stream(port: int, receive_buffer: int = 0) -> trio.SocketStream:
    """A TCP connection to ``port``; with a fixed receive buffer if asked (set before
    connecting, so that the window the peer sees is that small from the start)."""
    sock = trio.socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


@asynccontextmanager
async def raw_client(
    port: int, first: bytes = b"", receive_buffer: int = 0
) -> AsyncIterator[tuple[trio.SocketStream, bytes]]:
    """A hand-driven client: the handshake (plus ``first``) in one write; yields the
    stream and whatever came after the 101."""
    async with await open_stream(port, receive_buffer) as stream:
        await stream.send_all(
            client_request("127.0.0.1", "/media/mock", "dGhlIHNhbXBsZSBub25jZQ==") + first
        )
        head, rest = await read_head(stream)
        assert head.startswith(b"HTTP/1.1 101 ")
        yield stream, rest


async def read_until_closed(
    stream: trio.abc.ReceiveStream, codec: Codec, rest: bytes = b""
) -> list[Message]:
    """Read as a client until the server closes the TCP connection."""
    messages = codec.receive_data(rest)
    while data := await stream.receive_some(65536):
        messages += codec.receive_data(bytes(data))
    return messages


async def receive_forever(ws: WebSocket) -> None:
    while True:
        await ws.receive_batch()


# -- interop: trio-websocket as the client -------------------------------------------------


async def test_trio_websocket_client_and_our_server(nursery: trio.Nursery) -> None:
    closes: list[ConnectionClosed] = []
    port = await serve_ours(nursery, lambda ws: echo_until_closed(ws, closes))
    async with trio_websocket_client(port) as client:
        for size in SIZES:
            await client.send_message("é" * (size // 2))
            assert await client.get_message() == "é" * (size // 2)
            await client.send_message(bytes(size))
            assert await client.get_message() == bytes(size)
        await client.ping(b"are you there")  # returns once our pong arrives
        await client.aclose(4001, "bye")
        assert client.closed is not None
        assert client.closed.code == 4001
    await trio.testing.wait_all_tasks_blocked()
    [closed] = closes
    assert (closed.code, closed.reason, closed.by_peer) == (4001, "bye", True)


async def test_our_server_closes_with_a_code_the_client_sees(nursery: trio.Nursery) -> None:
    closed_in: list[float] = []

    async def one_then_close(ws: WebSocket) -> None:
        [message] = await ws.receive_batch()
        assert message == Message(b"last", True)
        await ws.close(4002, "done")
        closed_in.append(trio.current_time())
        with pytest.raises(ConnectionClosed) as after:
            ws.send_text(b"too late")
        assert (after.value.code, after.value.by_peer) == (4002, False)
        with pytest.raises(ConnectionClosed):
            await ws.receive_batch()

    port = await serve_ours(nursery, one_then_close)
    async with trio_websocket_client(port) as client:
        await client.send_message("last")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.get_message()
        assert close_code(closed.value) == (4002, "done")
    await trio.testing.wait_all_tasks_blocked()
    assert closed_in  # our close handshake finished (the client answered)


async def test_close_while_another_task_receives(nursery: trio.Nursery) -> None:
    seen: list[ConnectionClosed] = []

    async def reader_and_closer(ws: WebSocket) -> None:
        async def reader() -> None:
            try:
                while True:
                    await ws.receive_batch()
            except ConnectionClosed as closed:
                seen.append(closed)

        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await ws.close(4004, "hang up")

    port = await serve_ours(nursery, reader_and_closer)
    async with trio_websocket_client(port) as client:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.get_message()
        assert close_code(closed.value)[0] == 4004
    await trio.testing.wait_all_tasks_blocked()
    [reader_saw] = seen
    assert (reader_saw.code, reader_saw.by_peer) == (4004, False)


@pytest.mark.parametrize(("exit_by", "code"), [("error", 1011), ("cancel", 1001)])
async def test_leaving_by_an_exception_still_sends_a_close_frame(
    nursery: trio.Nursery, exit_by: str, code: int
) -> None:
    async def fail_inside(ws: WebSocket) -> None:
        async with ws:
            await ws.receive_batch()
            raise RuntimeError("handler bug")

    async def on_connection(stream: trio.abc.Stream) -> None:
        head, leftover = await read_head(stream)
        ws = await accept(stream, parse_request(head), leftover)
        if exit_by == "cancel":
            with trio.CancelScope() as scope:
                async with ws:
                    await ws.receive_batch()
                    scope.cancel()
                    await trio.sleep_forever()
        else:
            with pytest.raises(RuntimeError, match="handler bug"):
                await fail_inside(ws)

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, on_connection, [listener])
    port = listener.socket.getsockname()[1]
    async with trio_websocket_client(port) as client:
        await client.send_message("go")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.get_message()
        assert close_code(closed.value)[0] == code


# -- interop: trio-websocket as the server -------------------------------------------------


async def test_our_client_and_trio_websocket_server(nursery: trio.Nursery) -> None:
    seen: dict[str, object] = {}

    async def server(request: trio_websocket.WebSocketRequest) -> None:
        seen["path"] = request.path
        seen["call"] = dict(request.headers).get(b"x-call")
        conn = await request.accept()
        while (message := await conn.get_message()) != "close please":
            await conn.send_message(message)
        await conn.aclose(4003, "server done")

    ws_server = await nursery.start(trio_websocket.serve_websocket, server, "127.0.0.1", 0, None)
    ws = await connect(
        f"ws://127.0.0.1:{ws_server.port}/bridge?call=c1",
        headers=[("X-Call", "c1")],
        max_buffer=1 << 20,  # room for both big messages at once
    )
    async with ws:
        for size in SIZES:
            assert ws.send_text(("€" * size)[:size].encode())
            assert ws.send_binary(bytes(range(256)) * (size // 256))
            replies: list[Message] = []
            while len(replies) < 2:
                replies += await ws.receive_batch()
            assert replies == [
                Message(("€" * size)[:size].encode(), True),
                Message(bytes(range(256)) * (size // 256), False),
            ]
        ws.send_text(b"close please")
        with pytest.raises(ConnectionClosed) as closed:
            await receive_forever(ws)
        assert (closed.value.code, closed.value.reason, closed.value.by_peer) == (
            4003,
            "server done",
            True,
        )
    assert seen == {"path": "/bridge?call=c1", "call": b"c1"}


async def test_our_client_closes_with_a_code_the_server_sees(nursery: trio.Nursery) -> None:
    codes: list[int] = []

    async def server(request: trio_websocket.WebSocketRequest) -> None:
        conn = await request.accept()
        try:
            await conn.get_message()
        except trio_websocket.ConnectionClosed as closed:
            codes.append(close_code(closed)[0])

    ws_server = await nursery.start(trio_websocket.serve_websocket, server, "127.0.0.1", 0, None)
    ws = await connect(f"ws://127.0.0.1:{ws_server.port}/")
    await ws.close(1001, "going away")
    await ws.close()  # idempotent
    await trio.testing.wait_all_tasks_blocked()
    assert codes == [1001]


async def test_a_refused_upgrade_raises_with_the_status(nursery: trio.Nursery) -> None:
    async def server(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b"unknown token")

    ws_server = await nursery.start(trio_websocket.serve_websocket, server, "127.0.0.1", 0, None)
    with pytest.raises(HandshakeError) as refused:
        await connect(f"ws://127.0.0.1:{ws_server.port}/")
    assert refused.value.status == 403


async def test_connecting_to_a_closed_port_raises_oserror() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OSError):  # noqa: PT011 - the errno differs between systems
        await connect(f"ws://127.0.0.1:{port}/")


async def test_a_server_that_never_answers_times_out(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    async def mute(stream: trio.abc.Stream) -> None:
        async with stream:
            await trio.sleep_forever()

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, mute, [listener])
    port = listener.socket.getsockname()[1]
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await connect(f"ws://127.0.0.1:{port}/", connect_timeout=2.0)
    assert trio.current_time() - start == pytest.approx(2.0)


@pytest.mark.parametrize("url", ["http://example.com/", "ws:///nohost", "ws://u:p@host/"])
async def test_connect_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"URL|credentials"):
        await connect(url)


# -- TLS: the slower stream path -----------------------------------------------------------


async def test_wss_client_over_ssl_stream(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async def server(request: trio_websocket.WebSocketRequest) -> None:
        conn = await request.accept()
        await conn.send_message(await conn.get_message())
        await conn.aclose(4005, "tls done")

    ws_server = await nursery.start(
        trio_websocket.serve_websocket, server, "127.0.0.1", 0, server_tls
    )
    ws = await connect(f"wss://127.0.0.1:{ws_server.port}/", ssl_context=client_tls)
    async with ws:
        ws.send_binary(bytes(100_000))
        assert await ws.receive_batch() == [Message(bytes(100_000), False)]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.receive_batch()
        assert closed.value.code == 4005


async def test_our_server_over_tls(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    closes: list[ConnectionClosed] = []
    port = await serve_ours(nursery, lambda ws: echo_until_closed(ws, closes), tls=server_tls)
    async with trio_websocket_client(port, client_tls) as client:
        for size in SIZES:
            await client.send_message(bytes(size))
            assert await client.get_message() == bytes(size)
        await client.aclose(4006)
    await trio.testing.wait_all_tasks_blocked()
    assert [closed.code for closed in closes] == [4006]


# -- by hand: what no library client would do ----------------------------------------------


async def test_bytes_after_the_head_are_the_first_messages(nursery: trio.Nursery) -> None:
    firsts: list[list[Message]] = []

    async def record_first(ws: WebSocket) -> None:
        firsts.append(await ws.receive_batch())
        await ws.close()

    port = await serve_ours(nursery, record_first)
    codec = Codec(Role.CLIENT)
    async with raw_client(port, codec.text(b"early") + codec.binary(b"bird")) as (stream, rest):
        codec.receive_data(rest)
        # our close frame, or our answer to the server's if it came with the 101
        await stream.send_all(codec.close() + codec.data_to_send())
        await read_until_closed(stream, codec)
    assert firsts == [[Message(b"early", True), Message(b"bird", False)]]


async def test_a_bare_trio_socket_can_be_accepted(nursery: trio.Nursery) -> None:
    """The front door may hand over the socket it peeked at rather than its stream."""

    async def on_connection(stream: trio.SocketStream) -> None:
        head, leftover = await read_head(stream)
        ws = await accept(stream.socket, parse_request(head), leftover)
        async with ws:
            await echo_until_closed(ws, [])

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, on_connection, [listener])
    async with trio_websocket_client(listener.socket.getsockname()[1]) as client:
        await client.send_message(b"raw")
        assert await client.get_message() == b"raw"


async def test_a_malformed_upgrade_gets_an_http_error(nursery: trio.Nursery) -> None:
    async def never(ws: WebSocket) -> None:
        raise AssertionError("a malformed upgrade was accepted")

    port = await serve_ours(nursery, never)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /media/mock HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while data := await stream.receive_some(4096):
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(
        b'\r\n\r\n{"error":{"code":"bad_request","message":"missing Upgrade: websocket"}}'
    )


async def test_a_protocol_error_closes_with_1002(nursery: trio.Nursery) -> None:
    closes: list[ConnectionClosed] = []
    port = await serve_ours(nursery, lambda ws: echo_until_closed(ws, closes))
    unmasked = b"\x81\x02hi"  # a client must mask
    async with raw_client(port, unmasked) as (stream, rest):
        codec = Codec(Role.CLIENT)
        assert await read_until_closed(stream, codec, rest) == []
    assert (codec.state, codec.close_code, codec.closed_by_peer) == (State.CLOSED, 1002, True)
    [closed] = closes
    assert (closed.code, closed.by_peer) == (1002, False)


async def test_a_dropped_connection_is_1006(nursery: trio.Nursery) -> None:
    closes: list[ConnectionClosed] = []
    port = await serve_ours(nursery, lambda ws: echo_until_closed(ws, closes))
    async with raw_client(port):
        pass  # and leave without a close frame
    await trio.testing.wait_all_tasks_blocked()
    [closed] = closes
    assert (closed.code, closed.by_peer) == (1006, True)


async def test_close_gives_up_on_a_silent_peer(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    waited: list[float] = []

    async def close_alone(ws: WebSocket) -> None:
        start = trio.current_time()
        await ws.close()
        waited.append(trio.current_time() - start)

    port = await serve_ours(nursery, close_alone, close_timeout=3.0)
    async with raw_client(port) as (stream, rest):  # and never answers the close frame
        codec = Codec(Role.CLIENT)
        await read_until_closed(stream, codec, rest)  # the server closes the TCP connection
    assert codec.state is State.CLOSED
    assert codec.close_code == 1000
    assert waited == [pytest.approx(3.0)]


# -- backpressure and concurrent senders ---------------------------------------------------


async def test_a_peer_that_stops_reading_costs_drops_not_memory(nursery: trio.Nursery) -> None:
    report: dict[str, int] = {}
    resume = trio.Event()

    async def flood(ws: WebSocket) -> None:
        frame = bytes(1000)
        accepted = 0
        for _ in range(100_000):
            if not ws.send_binary(frame):
                break
            accepted += 1
        for _ in range(100):  # once full, everything more is dropped whole
            assert not ws.send_binary(frame)
            assert ws.buffered <= 4096
        report.update(accepted=accepted, dropped=ws.dropped, buffered=ws.buffered)
        resume.set()
        await ws.wait_flushed()
        assert ws.buffered == 0
        report["flushed"] = 1
        await ws.close()

    port = await serve_ours(nursery, flood, max_buffer=4096, send_buffer=4096)
    async with await open_stream(port, receive_buffer=4096) as stream:
        await stream.send_all(client_request("127.0.0.1", "/", "dGhlIHNhbXBsZSBub25jZQ=="))
        await resume.wait()
        assert report["dropped"] == 101
        assert 0 < report["buffered"] <= 4096
        codec = Codec(Role.CLIENT)
        _, rest = await read_head(stream)
        messages: list[Message] = codec.receive_data(rest)
        while len(messages) < report["accepted"]:
            messages += codec.receive_data(bytes(await stream.receive_some(65536)))
        assert messages == [Message(bytes(1000), False)] * report["accepted"]
        await stream.send_all(codec.close() + codec.data_to_send())
        await read_until_closed(stream, codec)
    assert report["flushed"] == 1


async def test_pongs_to_a_peer_that_does_not_read_count_against_the_buffer(
    nursery: trio.Nursery,
) -> None:
    report: dict[str, int] = {}
    flooded = trio.Event()

    async def flood_then_read(ws: WebSocket) -> None:
        while ws.send_binary(bytes(1000)):
            pass
        report["dropped_by_flood"] = ws.dropped
        flooded.set()
        assert await ws.receive_batch() == [Message(b"done", True)]  # pings are no messages
        report.update(buffered=ws.buffered, dropped=ws.dropped)

    port = await serve_ours(nursery, flood_then_read, max_buffer=4096, send_buffer=4096)
    codec = Codec(Role.CLIENT)
    async with raw_client(port, receive_buffer=4096) as (stream, _):
        await flooded.wait()  # every buffer on the way to us is full now
        for _ in range(100):  # one ping per read on the server side
            await stream.send_all(codec.ping(b"p" * 125))
            await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(codec.text(b"done"))
        await trio.testing.wait_all_tasks_blocked()
    assert report["buffered"] <= 4096
    assert report["dropped"] > report["dropped_by_flood"]  # pongs were dropped, not queued


async def test_two_tasks_sending_never_interleave_frames(nursery: trio.Nursery) -> None:
    count = 300

    async def two_senders(ws: WebSocket) -> None:
        async def send(name: bytes) -> None:
            for i in range(count):
                while not ws.send_text(name + b"%d " % i + b"x" * 3000):
                    await ws.wait_flushed()
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as senders:
            senders.start_soon(send, b"A")
            senders.start_soon(send, b"B")
        with pytest.raises(ConnectionClosed):
            await ws.receive_batch()  # until the client closes

    port = await serve_ours(nursery, two_senders, max_buffer=20_000)
    async with trio_websocket_client(port, max_message_size=10_000) as client:
        received: dict[str, list[int]] = {"A": [], "B": []}
        for _ in range(2 * count):
            message = await client.get_message()
            assert isinstance(message, str)
            name, filler = message.split(" ")
            received[name[0]].append(int(name[1:]))
            assert filler == "x" * 3000
            if len(received["A"]) % 50 == 0:
                await trio.sleep(0.001)  # a slow reader, so the buffer fills
    assert received == {"A": list(range(count)), "B": list(range(count))}


async def test_what_must_be_heard_goes_past_the_bound_behind_the_audio(
    nursery: trio.Nursery,
) -> None:
    """Once audio is dropped, a message sent ``droppable=False`` still goes, after the audio
    that waits; such messages have a bound of their own, ``max_buffer`` further."""
    report: dict[str, int] = {}
    resume = trio.Event()

    async def flood_then_mark(ws: WebSocket) -> None:
        accepted = 0
        while ws.send_binary(bytes(100)):
            accepted += 1
        assert ws.send_text(b"mark", droppable=False)
        report.update(accepted=accepted, buffered=ws.buffered)
        marks = 1
        while ws.send_text(b"mark", droppable=False):
            marks += 1
        report.update(marks=marks, most=ws.buffered)
        resume.set()
        await ws.wait_flushed()

    port = await serve_ours(nursery, flood_then_mark, max_buffer=4096, send_buffer=4096)
    codec = Codec(Role.CLIENT)
    async with raw_client(port, receive_buffer=4096) as (stream, rest):
        await resume.wait()
        messages = codec.receive_data(rest)
        while len(messages) < report["accepted"] + report["marks"]:
            messages += codec.receive_data(bytes(await stream.receive_some(65536)))
        await stream.send_all(codec.close() + codec.data_to_send())
        await read_until_closed(stream, codec)
    assert 4096 - 102 < report["buffered"] - len(b"mark") - 2 <= 4096
    assert 4096 * 2 - 6 < report["most"] <= 4096 * 2
    assert (
        messages
        == [Message(bytes(100), False)] * report["accepted"]
        + [Message(b"mark", True)] * report["marks"]
    )


@pytest.mark.parametrize(
    ("tls", "more"),
    [(False, False), (False, True), (True, True)],
    ids=["socket", "socket, more audio after a partial send", "tls, more audio while sending"],
)
async def test_discard_queued_drops_the_audio_waiting_whole_and_nothing_else(
    nursery: trio.Nursery,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    tls: bool,
    more: bool,
) -> None:
    """A barge-in on a peer that reads slowly: the audio frames waiting whole are dropped;
    the marks between them, and the frame the transport has begun to send (over TLS: every
    byte of the copy it is sending), still go, in order, before what is sent after. The peer
    gets only whole frames."""
    sent: list[Message] = []
    report: dict[str, int] = {}
    flooded, made_room, resume = trio.Event(), trio.Event(), trio.Event()

    async def flood_and_discard(ws: WebSocket) -> None:
        def flood(most: int) -> None:
            """Numbered audio, a mark after every tenth, until one is dropped or ``most``."""
            for _ in range(most):
                audio = Message(b"%06d" % len(sent) + bytes(94), False)
                if not ws.send_binary(audio.data):
                    return
                sent.append(audio)
                if len(sent) % 10 == 0:
                    mark = Message(b"mark %d" % len(sent), True)
                    assert ws.send_text(mark.data, droppable=False)
                    sent.append(mark)

        flood(600)  # more than the kernel takes, less than the bound: room for more
        flooded.set()
        await made_room.wait()
        await trio.testing.wait_all_tasks_blocked()  # the flusher sent what it could
        if more:
            flood(20)
        report["discarded"] = ws.discard_queued()
        assert ws.send_text(b"clear", droppable=False)
        assert ws.send_binary(b"after")
        sent.extend([Message(b"clear", True), Message(b"after", False)])
        resume.set()
        await ws.wait_flushed()

    port = await serve_ours(
        nursery,
        flood_and_discard,
        tls=server_tls if tls else None,
        max_buffer=65536,
        send_buffer=0 if tls else 4096,
    )
    client: trio.abc.Stream = await open_stream(port, receive_buffer=4096)
    if tls:
        client = trio.SSLStream(client, client_tls, server_hostname="127.0.0.1")
    async with client:
        await client.send_all(client_request("127.0.0.1", "/", "dGhlIHNhbXBsZSBub25jZQ=="))
        await flooded.wait()
        codec = Codec(Role.CLIENT)
        _, rest = await read_head(client)
        messages = codec.receive_data(rest + await client.receive_some(65536))
        made_room.set()
        await resume.wait()
        while not messages or messages[-1] != Message(b"after", False):
            messages += codec.receive_data(bytes(await client.receive_some(65536)))
        await client.send_all(codec.close() + codec.data_to_send())
        with contextlib.suppress(trio.BrokenResourceError):  # TLS ends with no close_notify
            await read_until_closed(client, codec)

    audio = [index for index, message in enumerate(sent) if not message.is_text]
    discarded = audio[-1 - report["discarded"] : -1]  # the last ones before "after"
    assert report["discarded"] > 0
    assert messages == [message for index, message in enumerate(sent) if index not in discarded]
