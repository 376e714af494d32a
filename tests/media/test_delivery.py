"""Messages handed to callbacks: :meth:`WebSocket.deliver` (the poller reads) and
:meth:`WebSocket.pump` (a task reads, as for TLS), which keep the same contract.

Each test runs both ways on a server-side websocket of ours, with our client as the peer,
over loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tests.support import wait_until
from voicecalld.media.connection import ConnectionClosed, WebSocket, accept, connect
from voicecalld.media.handshake import accept_response, head_length, parse_request
from voicecalld.media.poller import Poller
from voicecalld.media.websocket import Codec, Message, Role, State

MODES = ["poller", "pump"]


class Receiver:
    """What a websocket delivered: batches, and its end."""

    def __init__(self, on_batch: Callable[[list[Message]], None] | None = None) -> None:
        self.batches: list[list[Message]] = []
        self.ends: list[ConnectionClosed | Exception] = []
        self.on_batch = on_batch

    def messages(self, batch: list[Message]) -> None:
        self.batches.append(batch)
        if self.on_batch is not None:
            self.on_batch(batch)

    def end(self, reason: ConnectionClosed | Exception) -> None:
        self.ends.append(reason)

    @property
    def data(self) -> list[bytes]:
        return [message.data for batch in self.batches for message in batch]


@asynccontextmanager
async def connected(first: bytes = b"") -> AsyncIterator[tuple[WebSocket, trio.SocketStream]]:
    """A server-side websocket of ours, and the raw client stream at the other end; the
    client sends ``first`` (masked frames) in the same write as its upgrade request."""
    accepted: list[WebSocket] = []

    async def on_connection(stream: trio.SocketStream) -> None:
        received = b""
        while (length := head_length(received)) is None:
            received += await stream.receive_some(4096)
        request = parse_request(received[:length])
        accepted.append(await accept(stream, request, received[length:], close_timeout=1.0))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + first
        )
        await wait_until(lambda: accepted)
        head = b""
        while head_length(head) is None:  # the 101; nothing follows it unasked
            head += await client.receive_some(1)
        try:
            yield accepted[0], client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()  # first: the server's close then need not wait for it
                await accepted[0].close()
            nursery.cancel_scope.cancel()


def start(
    mode: str, ws: WebSocket, receiver: Receiver, nursery: trio.Nursery, poller: Poller
) -> None:
    if mode == "poller":
        ws.deliver(poller, receiver.messages, receiver.end)
    else:
        nursery.start_soon(ws.pump, receiver.messages, receiver.end)


@pytest.mark.parametrize("mode", MODES)
async def test_messages_come_in_batches_then_the_end_once(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    codec = Codec(Role.CLIENT)
    async with connected(codec.text(b"with the handshake")) as (ws, client):
        receiver = Receiver()
        start(mode, ws, receiver, nursery, poller)
        await client.send_all(codec.binary(b"one") + codec.text(b"two"))
        await wait_until(lambda: len(receiver.data) == 3)
        assert receiver.data == [b"with the handshake", b"one", b"two"]
        await client.send_all(codec.close(4001, "bye"))
        await wait_until(lambda: receiver.ends)
        await trio.testing.wait_all_tasks_blocked()
        [end] = receiver.ends
        assert isinstance(end, ConnectionClosed)
        assert (end.code, end.reason, end.by_peer) == (4001, "bye", True)
        with trio.fail_after(5):  # our answer to the close frame reaches the client
            while codec.state is not State.CLOSED:
                codec.receive_data(bytes(await client.receive_some(4096)))


@pytest.mark.parametrize("mode", MODES)
async def test_paused_nothing_comes_not_even_the_end(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    codec = Codec(Role.CLIENT)
    async with connected() as (ws, client):
        receiver = Receiver(on_batch=lambda _: ws.pause())
        start(mode, ws, receiver, nursery, poller)
        await client.send_all(codec.text(b"first"))
        await wait_until(lambda: receiver.data == [b"first"])
        await client.send_all(codec.text(b"second") + codec.close(4002))
        await trio.testing.wait_all_tasks_blocked()  # the poller would have read by now
        assert (receiver.data, receiver.ends) == ([b"first"], [])
        receiver.on_batch = None
        ws.resume()
        await wait_until(lambda: receiver.ends)
        assert receiver.data == [b"first", b"second"]
        [end] = receiver.ends
        assert isinstance(end, ConnectionClosed) and end.code == 4002


@pytest.mark.parametrize("mode", MODES)
async def test_a_pause_from_elsewhere_holds_what_comes_next(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    codec = Codec(Role.CLIENT)
    async with connected() as (ws, client):
        receiver = Receiver()
        start(mode, ws, receiver, nursery, poller)
        await trio.testing.wait_all_tasks_blocked()  # waiting for the socket
        ws.pause()
        await client.send_all(codec.text(b"held"))
        await trio.testing.wait_all_tasks_blocked()
        assert receiver.batches == []
        ws.resume()
        await wait_until(lambda: receiver.data == [b"held"])


@pytest.mark.parametrize("mode", MODES)
async def test_a_dropped_connection_ends_1006(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    async with connected() as (ws, client):
        receiver = Receiver()
        start(mode, ws, receiver, nursery, poller)
        await client.aclose()
        await wait_until(lambda: receiver.ends)
        [end] = receiver.ends
        assert isinstance(end, ConnectionClosed) and (end.code, end.by_peer) == (1006, True)


@pytest.mark.parametrize("mode", MODES)
async def test_a_callback_that_raises_ends_the_delivery_with_its_error(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    def bug(batch: list[Message]) -> None:
        raise RuntimeError("a bug in the receiver")

    codec = Codec(Role.CLIENT)
    async with connected() as (ws, client):
        receiver = Receiver(on_batch=bug)
        start(mode, ws, receiver, nursery, poller)
        await client.send_all(codec.text(b"boom"))
        await wait_until(lambda: receiver.ends)
        await client.send_all(codec.text(b"after"))
        await trio.testing.wait_all_tasks_blocked()
        assert receiver.data == [b"boom"]
        [end] = receiver.ends
        assert isinstance(end, RuntimeError)


@pytest.mark.parametrize("mode", MODES)
async def test_closing_ends_the_delivery_without_calling_back(
    mode: str, nursery: trio.Nursery, poller: Poller
) -> None:
    codec = Codec(Role.CLIENT)
    async with connected() as (ws, client):
        receiver = Receiver()
        start(mode, ws, receiver, nursery, poller)
        await trio.testing.wait_all_tasks_blocked()

        async def answer_close() -> None:
            while codec.state is not State.CLOSED:
                codec.receive_data(bytes(await client.receive_some(4096)))
            await client.send_all(codec.data_to_send())

        nursery.start_soon(answer_close)
        await ws.close(4003, "done")
        assert codec.close_code == 4003
        assert receiver.ends == []
        assert len(poller) == 0


async def test_the_socket_leaves_the_poller_before_it_is_closed(
    nursery: trio.Nursery, poller: Poller
) -> None:
    async with connected() as (ws, _):
        ws.deliver(poller, Receiver().messages, Receiver().end)
        assert len(poller) == 1
        with pytest.raises(RuntimeError):
            async with ws:
                raise RuntimeError("the owner fails")
        assert len(poller) == 0


async def test_a_delivery_that_starts_paused_keeps_the_handshake_messages_until_resumed(
    nursery: trio.Nursery, poller: Poller
) -> None:
    codec = Codec(Role.CLIENT)
    async with connected(codec.text(b"with the handshake")) as (ws, _):
        receiver = Receiver()
        ws.pause()
        ws.deliver(poller, receiver.messages, receiver.end)
        assert receiver.batches == []
        ws.resume()
        assert receiver.data == [b"with the handshake"]


async def test_resuming_after_the_poller_stopped_delivers_nothing_and_raises_nothing() -> None:
    """The runtime was cancelled while a job (a digit being recorded) held the delivery."""
    async with connected() as (ws, client):
        poller, receiver = Poller(), Receiver()
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            ws.deliver(poller, receiver.messages, receiver.end)
            ws.pause()
            nursery.cancel_scope.cancel()
        await client.send_all(Codec(Role.CLIENT).text(b"too late"))
        ws.resume()
        assert (receiver.batches, receiver.ends, len(poller)) == ([], [], 0)


async def test_only_a_raw_socket_can_be_polled(nursery: trio.Nursery, poller: Poller) -> None:
    stream_left, _ = trio.testing.memory_stream_pair()
    request = parse_request(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    ws = await accept(stream_left, request)
    assert not ws.pollable
    with pytest.raises(ValueError, match="pump"):
        ws.deliver(poller, Receiver().messages, Receiver().end)
    await trio.aclose_forcefully(stream_left)


async def test_delivering_twice_is_an_error(nursery: trio.Nursery, poller: Poller) -> None:
    async with connected() as (ws, _):
        receiver = Receiver()
        ws.deliver(poller, receiver.messages, receiver.end)
        with pytest.raises(RuntimeError, match="already delivering"):
            await ws.pump(receiver.messages, receiver.end)


async def test_our_client_can_be_polled_too(nursery: trio.Nursery, poller: Poller) -> None:
    """The bridge is a client websocket: messages that came with the 101 come first."""
    codec = Codec(Role.SERVER)
    delivering = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        received = b""
        while (length := head_length(received)) is None:
            received += await stream.receive_some(4096)
        await stream.send_all(
            accept_response(parse_request(received[:length])) + codec.text(b"hello")
        )
        await delivering.wait()
        await stream.send_all(codec.binary(b"audio") + codec.close(4004))
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, server, listeners)
    ws = await connect(f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/", close_timeout=0.1)
    receiver = Receiver()
    ws.deliver(poller, receiver.messages, receiver.end)
    assert receiver.batches == [[Message(b"hello", True)]]
    delivering.set()
    await wait_until(lambda: receiver.ends)
    assert receiver.data == [b"hello", b"audio"]
    await ws.close()
