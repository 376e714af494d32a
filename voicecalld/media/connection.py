"""The trio shell of the media websocket fast path: one non-blocking socket, no task per frame.

:class:`WebSocket` carries carrier media streams (server role, :func:`accept`) and the app
bridge (client role, :func:`connect`). Carrier streams arrive at 50 frames a second each,
so every trio round trip per frame shows: this shell adds none, and need not even wake a task.

Invariants, and why:

- Receiving is one non-blocking ``recv`` and one pass of the codec, whoever waits for the
  socket: the messages that ``recv`` completed come out together, in order. Three ways:
  :meth:`WebSocket.receive_batch` returns them to the one task that waits (trio refuses
  two waiting on one socket); :meth:`WebSocket.deliver` hands them to a callback from a
  :class:`~voicecalld.media.poller.Poller`, which waits for every media socket in one task
  (the fast path: no task wakes per frame); :meth:`WebSocket.pump` does the same from a task
  of the caller's (TLS streams, which a poller cannot read, and systems without ``epoll``).
- Delivered messages go to a synchronous callback, and the connection's end to another,
  once; a receiver that must await before it can take more pauses the delivery and resumes
  it (an end that came meanwhile is told on resuming, after what came before it). A callback
  that raises ends the delivery with its exception, so a bug is reported to the owner, not
  lost in the poller. The owner still closes the connection; closing ends the delivery first.
- Sending is synchronous: :meth:`WebSocket.send_text` tries ``socket.send`` at once. Whatever
  the kernel does not take waits in one outgoing buffer, in order. A send never yields to
  trio, so frames are never interleaved and any number of tasks may send on one connection.
- Messages are *droppable* (audio: the default) or not (what the peer must hear: a mark, a
  clear, a ``stop``). A droppable one that would take the buffer over ``max_buffer`` is
  dropped whole (the send returns ``False`` and :attr:`WebSocket.dropped` counts it), never
  cut, so a slow peer costs lost audio, not memory (only a single frame bigger than the
  bound, sent while the buffer was empty, may wait there alone). Other messages go past
  that bound, behind what waits: dropping them would lose a barge-in or leave an app
  waiting for a mark forever. They have a bound of their own, ``max_buffer`` more, so a
  peer that reads nothing while the other side sends marks in a loop still cannot grow
  memory without limit; that far behind, they are dropped and counted like audio.
- :meth:`WebSocket.discard_queued` drops the droppable messages still waiting whole in the
  buffer (a barge-in: audio queued for the caller must not play). So the buffer knows where
  each droppable frame queued there begins and ends, counted in bytes taken from its front
  since the connection opened; a frame the kernel took a part of is past saving and goes
  out whole, as does every other message, in order. The bookkeeping is only done for frames
  that wait: a frame the kernel takes at once (the usual case) costs nothing more.
- The buffer is flushed by the next send, and by a flusher that exists only while it holds
  bytes. The flusher is a trio *system* task: it needs no nursery from the caller, lives
  for as long as the socket is not writable and catches every I/O error itself (a system
  task that raised would end the run).
- Pongs (one per ``recv`` at most: the codec answers only the latest ping) count against
  the bound like data, so a peer pinging without reading gets no more pongs; close frames
  bypass it: there is one per connection and it must go.
- The socket is owned: :func:`accept` and :func:`connect` take it over (detaching a trio
  socket from its wrapper) and :meth:`WebSocket.close` always closes it, within
  ``close_timeout`` of starting the closing handshake, after taking it out of its poller
  (the number of a closed descriptor is soon another socket's).
- ``wss://`` (and a front door that terminates TLS itself) runs over a ``trio.SSLStream``:
  the same API, but every send goes through the flusher and ``send_all``, one task hop per
  burst of frames, so it is slower than the raw-socket path.

Example (server side, after the front door read and routed the request head)::

    request = handshake.parse_request(head)
    ws = await accept(stream, request, leftover)
    async with ws:
        while True:
            for message in await ws.receive_batch():   # raises ConnectionClosed at the end
                ws.send_text(reply_to(message.data))

or, with no task of its own while the connection lives::

    ws.deliver(poller, on_messages=handle_batch, on_end=note_the_end)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import types
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, final
from urllib.parse import urlsplit

import trio

from voicecalld.media import handshake
from voicecalld.media.handshake import HandshakeError, UpgradeRequest
from voicecalld.media.poller import Poller
from voicecalld.media.websocket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    CloseCode,
    Codec,
    Message,
    Role,
    State,
)

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BUFFER",
    "ConnectionClosed",
    "WebSocket",
    "accept",
    "connect",
    "refuse",
]

DEFAULT_MAX_BUFFER = 64 * 1024
"""Outgoing bytes held for a slow peer: a few seconds of any carrier's 20 ms frames."""
DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0

_RECV_SIZE = 65536
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
_log = logging.getLogger(__name__)


class ConnectionClosed(Exception):
    """The websocket is closed: raised by receives once it is, and by sends after.

    ``code`` and ``reason`` are those of the close frame that started the closing
    handshake, whichever side sent it (1005 when the peer's carried no code, 1006 when the
    connection ended without one); ``by_peer`` tells which side that was.
    """

    def __init__(self, code: int, reason: str, by_peer: bool) -> None:
        super().__init__(f"websocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class _Transport(Protocol):
    pinned: int
    """Bytes at the front of the outgoing buffer that a :meth:`send_some` under way is sending
    from a copy: they must stay where they are until it returns."""

    async def receive(self) -> bytes:
        """Bytes from the peer; ``b""`` at end of stream."""

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what can go without waiting; how much went."""

    async def send_some(self, data: bytearray) -> int:
        """Wait until some of ``data`` can go, send it; how much went."""

    async def send_all(self, data: bytes) -> None: ...

    async def aclose(self) -> None:
        """Close now, without waiting for the peer; idempotent."""


@final
class _SocketTransport:
    """A connected stdlib socket in non-blocking mode: the fast path."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # 20 ms frames must not wait for Nagle to fill a segment
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._sock = sock
        self.pinned = 0
        """Always: :meth:`send_some` sends from the buffer itself, after its wait."""

    def _check_open(self) -> None:
        # trio would wait on descriptor -1 with a ValueError; say what happened instead
        if self._sock.fileno() == -1:
            raise trio.ClosedResourceError("the websocket's socket is closed")

    async def receive(self) -> bytes:
        self._check_open()
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                return self._sock.recv(_RECV_SIZE)
            except BlockingIOError:  # readiness can be spurious
                continue

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def send_some(self, data: bytearray) -> int:
        self._check_open()
        await trio.lowlevel.wait_writable(self._sock)
        return self.send_nowait(data) if data else 0

    async def send_all(self, data: bytes) -> None:
        self._check_open()
        view = memoryview(data)
        while view:
            view = view[self.send_nowait(view) :]
            if view:
                await trio.lowlevel.wait_writable(self._sock)

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


@final
class _StreamTransport:
    """Any trio stream (in practice a ``trio.SSLStream``): sends always go through
    the flusher, because a stream can only be written by awaiting."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.pinned = 0

    async def receive(self) -> bytes:
        return bytes(await self._stream.receive_some(_RECV_SIZE))

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        return 0

    async def send_some(self, data: bytearray) -> int:
        chunk = bytes(data)
        self.pinned = len(chunk)
        try:
            await self._stream.send_all(chunk)
        finally:
            self.pinned = 0
        return len(chunk)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


def _transport(connection: trio.abc.Stream | trio.socket.SocketType) -> _Transport:
    """The fast path for a plain TCP connection, the stream path for anything else."""
    if isinstance(connection, trio.SocketStream):
        connection = connection.socket
    if isinstance(connection, trio.socket.SocketType):
        return _SocketTransport(socket.socket(fileno=connection.detach()))
    return _StreamTransport(connection)


@final
class WebSocket:
    """One open websocket connection, either role. Made by :func:`accept` or :func:`connect`.

    ``async with ws:`` closes it on the way out: the full closing handshake (1000) when the
    block ends normally, a best-effort close frame without waiting when it ends by an
    exception (1001 when cancelled, as on shutdown; 1011 otherwise).
    """

    def __init__(
        self,
        transport: _Transport,
        codec: Codec,
        *,
        max_buffer: int,
        close_timeout: float,
    ) -> None:
        self._transport = transport
        self._codec = codec
        self._max_buffer = max_buffer
        self._hard_limit = 2 * max_buffer
        """What the buffer holds at most, but for a close frame: the bound of messages that
        are not droppable."""
        self._close_timeout = close_timeout
        self._send_nowait = transport.send_nowait
        self._out = bytearray()
        self._taken = 0
        """Bytes the transport took from the front of ``_out`` since the connection opened."""
        self._droppable: deque[tuple[int, int]] = deque()
        """Where droppable frames queued whole in ``_out`` begin and end, counted as ``_taken``
        is; a frame whose start was taken is past dropping (its entry goes at the next one)."""
        self._backlog: list[Message] = []
        self._can_send = True
        self._eof = False
        self._flushing = False
        self._drained = trio.lowlevel.ParkingLot()
        self._receiving = False
        self._reader_left = trio.lowlevel.ParkingLot()
        self._closing = False
        self._close_reading = False
        self._closed = trio.Event()
        self._on_messages: Callable[[list[Message]], object] | None = None
        self._on_end: Callable[[ConnectionClosed | Exception], object] | None = None
        """Set while messages are delivered (:meth:`deliver`, :meth:`pump`)."""
        self._poller: Poller | None = None
        """Set by :meth:`deliver`: the poller that reads (with ``_recv``) this connection."""
        self._recv: Callable[[int], bytes]
        self._watched = False
        self._paused = False
        self._resumed = trio.lowlevel.ParkingLot()
        self.dropped = 0
        """Frames dropped because the outgoing buffer was full (messages sent, and pongs);
        not those :meth:`discard_queued` dropped."""

    # -- receiving -------------------------------------------------------------------------

    async def receive_batch(self) -> list[Message]:
        """Wait for the next ``recv`` that completes messages; return all of them, in order.

        Never returns an empty list. Raises :class:`ConnectionClosed` once the connection
        is closed (after returning the messages that arrived before the close frame).
        """
        if self._backlog:
            batch, self._backlog = self._backlog, []
            return batch
        if self._close_reading:
            await self._closed.wait()
            raise self._status()
        self._receiving = True
        try:
            while True:
                if self._eof or self._codec.state is State.CLOSED:
                    await self._finish()
                    raise self._status()
                messages = await self._receive_once()
                if messages:
                    return messages
        finally:
            self._receiving = False
            if self._reader_left:
                self._reader_left.unpark_all()

    async def _receive_once(self) -> list[Message]:
        try:
            data = await self._transport.receive()
        except _IO_ERRORS:
            data = b""
        if not data:
            self._eof = True
            self._can_send = False
            return []
        return self._feed(data)

    def _feed(self, data: bytes) -> list[Message]:
        messages = self._codec.receive_data(data)
        control = self._codec.data_to_send()
        if control:
            if self._codec.state is State.OPEN:
                # only pongs: bounded like audio, so a peer that pings without reading
                # cannot grow the buffer (RFC 6455 lets a pong answer only the last ping)
                self._write(control, self._max_buffer)
            else:
                # a close frame (ours or our answer), after any pongs: it must go
                self._can_send = False
                self._write(control)
        return messages

    # -- delivering: messages handed to callbacks ------------------------------------------

    @property
    def pollable(self) -> bool:
        """Whether :meth:`deliver` can serve this connection: a raw socket, not TLS."""
        return isinstance(self._transport, _SocketTransport)

    def deliver(
        self,
        poller: Poller,
        on_messages: Callable[[list[Message]], object],
        on_end: Callable[[ConnectionClosed | Exception], object],
    ) -> None:
        """Let ``poller`` read from now on: whenever the socket is readable, one ``recv`` and
        one pass of the codec, and the messages it completed go to ``on_messages(batch)``.

        ``on_end`` is called once, when the connection ends (with the
        :class:`ConnectionClosed` that :meth:`receive_batch` would raise) or when
        ``on_messages`` raised (with that exception: nothing more is delivered). Both run in
        the poller's task and must not block; nothing is delivered while paused
        (:meth:`pause`), not even the end, until :meth:`resume`. Messages that came with the
        handshake are handed over before this returns. The owner still closes the connection
        (``await ws.close()``, which ends the delivery first); :meth:`receive_batch` must not
        be used meanwhile.
        Only for a :attr:`pollable` connection; :meth:`pump` serves any.
        """
        if not isinstance(self._transport, _SocketTransport):
            raise ValueError("only a raw-socket websocket can be polled; pump() it instead")
        self._start_delivery(on_messages, on_end)
        self._poller = poller
        self._recv = self._transport.sock.recv
        self._hand_backlog_or_watch()

    async def pump(
        self,
        on_messages: Callable[[list[Message]], object],
        on_end: Callable[[ConnectionClosed | Exception], object],
    ) -> None:
        """Deliver as :meth:`deliver` does, from the calling task: the path of TLS
        connections, and of every connection where there is no poller. Returns after
        ``on_end``, or when :meth:`close` ends the delivery."""
        self._start_delivery(on_messages, on_end)
        try:
            while self._on_end is not None:
                await self._while_paused()
                try:
                    batch = await self.receive_batch()
                except ConnectionClosed as closed:
                    await self._while_paused()
                    self._end(closed)
                    return
                await self._while_paused()  # paused while the batch was on its way
                if self._on_messages is not None:
                    self._hand(batch)
        finally:
            self._stop_delivery()

    async def _while_paused(self) -> None:
        while self._paused and self._on_end is not None:
            await self._resumed.park()

    def pause(self) -> None:
        """Deliver nothing more until :meth:`resume`: for a receiver that must await before it
        can take more (whatever it did not handle of the batch it got is its own to keep)."""
        self._paused = True
        self._unwatch()

    def resume(self) -> None:
        """Deliver again, beginning with the end of the connection if it came meanwhile."""
        if not self._paused:
            return
        self._paused = False
        if self._poller is None:
            self._resumed.unpark_all()
        elif self._poller.running:  # else the runtime is ending: nothing more to deliver
            self._hand_backlog_or_watch()

    def _start_delivery(
        self,
        on_messages: Callable[[list[Message]], object],
        on_end: Callable[[ConnectionClosed | Exception], object],
    ) -> None:
        if self._on_end is not None or self._closing:
            raise RuntimeError("this websocket is already delivering, or closing")
        self._on_messages, self._on_end = on_messages, on_end

    def _on_readable(self) -> None:
        """The poller's callback: one ``recv``, one pass of the codec, one hand-over."""
        try:
            data = self._recv(_RECV_SIZE)
        except BlockingIOError:
            return  # readiness can be spurious
        except OSError:
            data = b""
        if data:
            try:
                batch = self._feed(data)
            except ConnectionClosed:  # our pong or close answer found the connection broken
                batch = []
            if batch:
                self._hand(batch)
        else:
            self._eof = True
            self._can_send = False
        if self._eof or self._codec.state is State.CLOSED:
            self._watch_or_end()

    def _hand(self, batch: list[Message]) -> None:
        assert self._on_messages is not None
        try:
            self._on_messages(batch)
        except Exception as error:
            self._end(error)

    def _hand_backlog_or_watch(self) -> None:
        """Poller mode, not paused: what came with the handshake first, then the socket."""
        if self._paused:
            return
        if self._backlog:
            batch, self._backlog = self._backlog, []
            self._hand(batch)
        self._watch_or_end()

    def _watch_or_end(self) -> None:
        """Poller mode, delivering and not paused: report the end if it came, else watch."""
        if self._on_end is None or self._paused:
            return
        if self._eof or self._codec.state is State.CLOSED:
            self._end(self._status())
        elif not self._watched:
            assert self._poller is not None
            self._poller.watch(self._transport_socket(), self._on_readable)
            self._watched = True

    def _end(self, reason: ConnectionClosed | Exception) -> None:
        on_end = self._on_end
        self._stop_delivery()
        if on_end is not None:
            on_end(reason)

    def _stop_delivery(self) -> None:
        self._on_messages = self._on_end = None
        self._unwatch()
        self._resumed.unpark_all()

    def _unwatch(self) -> None:
        if self._watched:
            assert self._poller is not None
            self._poller.unwatch(self._transport_socket())
            self._watched = False

    def _transport_socket(self) -> socket.socket:
        assert isinstance(self._transport, _SocketTransport)
        return self._transport.sock

    # -- sending ---------------------------------------------------------------------------

    def send_text(self, data: bytes, *, droppable: bool = True) -> bool:
        """Send one text message (``data`` is UTF-8, e.g. from ``orjson.dumps``).

        A ``droppable`` message (audio) is dropped when the outgoing buffer is full, and by
        :meth:`discard_queued` while it waits; any other (a mark, a clear, a ``stop``) goes
        behind what waits even past ``max_buffer``, and is dropped only ``max_buffer`` further.
        Returns ``False`` when the frame was dropped. Raises :class:`ConnectionClosed` once
        the connection is closing or closed.
        """
        if not self._can_send:
            raise self._status()
        if droppable:
            return self._write(self._codec.text(data), self._max_buffer, True)
        return self._write(self._codec.text(data), self._hard_limit)

    def send_binary(self, data: bytes, *, droppable: bool = True) -> bool:
        """Send one binary message; same contract as :meth:`send_text`."""
        if not self._can_send:
            raise self._status()
        if droppable:
            return self._write(self._codec.binary(data), self._max_buffer, True)
        return self._write(self._codec.binary(data), self._hard_limit)

    def discard_queued(self) -> int:
        """Drop the droppable messages still waiting whole to be sent; return how many.

        For a barge-in: audio queued for the caller must not play. Whatever else waits (marks,
        and a frame the transport has begun to send) stays, in order.
        """
        out, taken = self._out, self._taken
        untouched = taken + self._transport.pinned  # what comes before is sent, or going
        spans = [
            (start - taken, end - taken) for start, end in self._droppable if start >= untouched
        ]
        self._droppable.clear()
        if spans:
            kept, position = bytearray(), 0
            with memoryview(out) as view:
                for start, end in spans:
                    kept += view[position:start]
                    position = end
                kept += view[position:]
            out[:] = kept  # in place: the flusher holds this bytearray
        return len(spans)

    @property
    def buffered(self) -> int:
        """Bytes waiting for the peer to read."""
        return len(self._out)

    async def wait_flushed(self) -> None:
        """Wait until every byte sent so far has gone to the kernel (or the connection broke).

        For a sender that would rather wait than drop: ``if ws.buffered > limit: await
        ws.wait_flushed()``.
        """
        while self._out:
            await self._drained.park()

    def _write(self, frame: bytes, limit: int | None = None, droppable: bool = False) -> bool:
        """Send ``frame``, behind what waits; ``False`` if that would take the buffer over
        ``limit``. A ``droppable`` frame that waits whole is noted for :meth:`discard_queued`."""
        out = self._out
        if out:
            if limit is not None and len(out) + len(frame) > limit:
                self.dropped += 1
                return False
            if droppable:
                self._note_droppable(len(out), len(frame))
            out += frame
            frame = b""  # sent below, from the buffer, behind what waits there
        try:
            if out:
                sent = self._send_nowait(out)
                del out[:sent]
                self._taken += sent
            else:
                sent = self._send_nowait(frame)
                if sent < len(frame):
                    if droppable and not sent:
                        self._note_droppable(0, len(frame))
                    out += memoryview(frame)[sent:]
        except OSError:
            self._break()
            raise self._status() from None
        if out and not self._flushing:
            self._flushing = True
            trio.lowlevel.spawn_system_task(self._flush, name="websocket flusher")
        return True

    def _note_droppable(self, offset: int, length: int) -> None:
        """A droppable frame of ``length`` bytes waits whole at ``offset`` in the buffer."""
        droppable, taken = self._droppable, self._taken
        while droppable and droppable[0][0] < taken:  # sent since, in part at least
            droppable.popleft()
        start = taken + offset
        droppable.append((start, start + length))

    async def _flush(self) -> None:
        try:
            while self._out:
                sent = await self._transport.send_some(self._out)
                del self._out[:sent]
                self._taken += sent
            self._droppable.clear()
        except _IO_ERRORS:
            self._break()
        except Exception:
            # A system task that raises ends the whole trio run: one connection's bug
            # must not take every call down, so it is logged and the connection dropped.
            _log.exception("websocket flusher failed")
            self._break()
        finally:
            self._flushing = False
            self._drained.unpark_all()

    def _break(self) -> None:
        """The connection failed under us: drop what waits, refuse further sends."""
        self._eof = True
        self._can_send = False
        self._out.clear()
        self._droppable.clear()
        self._drained.unpark_all()

    # -- closing ---------------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: send our close frame, wait for the peer's, close the socket.

        Takes at most ``close_timeout``; the socket is closed whatever happens (even when
        cancelled). Idempotent, and safe while another task waits in
        :meth:`receive_batch` (that task then gets :class:`ConnectionClosed`).
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._stop_delivery()
        try:
            with trio.move_on_after(self._close_timeout):
                frame = self._codec.close(code, reason)
                if frame:
                    self._can_send = False
                    self._write(frame)
                while self._receiving and not self._eof and self._codec.state is not State.CLOSED:
                    await self._reader_left.park()
                # From here close() reads the peer's last frames itself, dropping messages;
                # a receive_batch that comes back meanwhile waits for the end.
                self._close_reading = True
                while not self._eof and self._codec.state is not State.CLOSED:
                    await self._receive_once()
                await self.wait_flushed()
        except ConnectionClosed:
            pass  # the connection broke while we sent our close frame
        finally:
            await self._finish(flush=False)

    async def _finish(self, *, flush: bool = True) -> None:
        """Let what waits in the buffer go (our close answer), then close the socket."""
        try:
            if flush:
                with trio.move_on_after(self._close_timeout):
                    await self.wait_flushed()
        finally:
            self._can_send = False
            self._eof = True  # nothing more can be read from a closed socket
            self._unwatch()  # before the descriptor is closed (and can be reused)
            await self._transport.aclose()
            self._closed.set()

    def _status(self) -> ConnectionClosed:
        code = self._codec.close_code
        if code is None:
            return ConnectionClosed(CloseCode.ABNORMAL, "", by_peer=True)
        return ConnectionClosed(code, self._codec.close_reason, self._codec.closed_by_peer)

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            return
        self._stop_delivery()
        cancelled = isinstance(exc, trio.Cancelled) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None
        )
        code = CloseCode.GOING_AWAY if cancelled else CloseCode.INTERNAL_ERROR
        frame = self._codec.close(code)
        if frame and not self._out and not self._eof:
            with contextlib.suppress(OSError):  # best effort: we are leaving anyway
                self._send_nowait(frame)
        await self._finish(flush=False)


async def accept(
    connection: trio.abc.Stream | trio.socket.SocketType,
    request: UpgradeRequest,
    leftover: bytes = b"",
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> WebSocket:
    """Answer ``request`` with 101 and return the open server-side websocket.

    ``connection`` is the accepted connection whose request head the caller has read:
    a ``trio.SocketStream`` or trio socket (taken over for the fast path: do not use it
    afterwards) or any other trio stream (e.g. an ``SSLStream``). ``leftover`` is whatever
    was read past the head; messages in it come out of the first
    :meth:`WebSocket.receive_batch`. Raises :class:`ConnectionClosed` (1006) if the client
    is already gone.
    """
    ws = WebSocket(
        _transport(connection),
        Codec(Role.SERVER, max_message_size=max_message_size),
        max_buffer=max_buffer,
        close_timeout=close_timeout,
    )
    ws._write(handshake.accept_response(request))
    if leftover:
        ws._backlog = ws._feed(leftover)
    await trio.lowlevel.checkpoint()
    return ws


async def refuse(
    connection: trio.abc.Stream | trio.socket.SocketType,
    status: int,
    message: str = "",
    headers: handshake.Headers = (),
    *,
    send_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> None:
    """Answer an upgrade request with a plain HTTP error and close the connection.

    For a :class:`~voicecalld.media.handshake.HandshakeError` ``exc``:
    ``await refuse(connection, exc.status, exc.message, exc.headers)``.
    """
    transport = _transport(connection)
    try:
        with trio.move_on_after(send_timeout):
            await transport.send_all(handshake.error_response(status, message, headers))
    except _IO_ERRORS:
        pass  # the client went away: nothing left to tell it
    finally:
        await transport.aclose()


async def connect(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> WebSocket:
    """Open a client websocket to a ``ws://`` or ``wss://`` URL.

    ``ws://`` runs on the raw-socket fast path; ``wss://`` over a ``trio.SSLStream`` (with
    ``ssl_context``, default ``ssl.create_default_context()``), slower. ``headers`` are
    added to the upgrade request. Raises ``OSError`` when the host cannot be reached,
    :class:`~voicecalld.media.handshake.HandshakeError` when the server refuses (its status
    in ``.status``), ``trio.TooSlowError`` past ``connect_timeout``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in a websocket URL are not supported")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = handshake.new_key()
    request = handshake.client_request(parts.netloc, target, key, headers)

    with trio.fail_after(connect_timeout):
        transport: _Transport
        if secure:
            context = ssl_context or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(parts.hostname, port, ssl_context=context)
            transport = _StreamTransport(stream)
        else:
            transport = _transport(await trio.open_tcp_stream(parts.hostname, port))
        try:
            await transport.send_all(request)
            received = b""
            while (length := handshake.head_length(received, handshake.MAX_HEAD_SIZE)) is None:
                data = await transport.receive()
                if not data:
                    raise HandshakeError(0, "connection closed during the handshake")
                received += data
            handshake.check_response(received[:length], key)
        except BaseException:
            await transport.aclose()
            raise

    ws = WebSocket(
        transport,
        Codec(Role.CLIENT, max_message_size=max_message_size),
        max_buffer=max_buffer,
        close_timeout=close_timeout,
    )
    if len(received) > length:
        ws._backlog = ws._feed(received[length:])
    return ws
