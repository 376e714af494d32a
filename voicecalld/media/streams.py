"""Carrier media streams on ``/media/{provider}``, and their bridge to the application (SPEC §8).

The front door hands this module every connection whose first bytes are ``GET /media/``; from
there to the application and back nothing else runs. Once a stream has started, no task wakes
for its frames: one :class:`~voicecalld.media.poller.Poller` per runtime reads every started
stream's carrier and bridge websockets, and hands each batch of messages to a callback here
that handles it on the spot: an audio frame is parsed, converted and sent straight to the other
side, synchronously. Sends never block (a full outgoing buffer drops the frame, counted in
``/metrics``), so a slow side costs audio, never memory. (Waking a task per frame, with the
layers around it, was a good quarter of the daemon's time; the poller halves the cost of a
bridged frame.) Only audio is dropped so: a mark, a clear, a DTMF digit or ``stop`` goes
behind whatever waits, past the bound audio keeps (up to a second bound of its own: see
:mod:`voicecalld.media.connection`). An app's ``clear`` is a barge-in: the audio still waiting
to be sent to the carrier is dropped, then the carrier is told to clear what it queued.

The app hears the caller in frames of exactly 20 ms of its encoding, as ``start`` says
(``frame_ms``), whatever the size of the carrier's chunks: a chunk of exactly one frame, with
nothing kept from the last one, goes as it came (the usual case, and the hot path: a length
check is all it costs); any other is cut by the stream's :class:`~voicecalld.media.audio.Framer`,
which keeps what is short of a frame for the next chunk. What it keeps when the stream ends,
under 20 ms of audio after the carrier's last chunk, is dropped, not padded to a frame: padding
would hand the app sound nobody made, ahead of a ``stop`` that ends the audio anyway. The app's
audio goes to the carrier in the chunks the app sent: SPEC §8 sets no size for them, and a
carrier plays chunks of any size (Telnyx asks for 20 ms at least: an app should send that).

What cannot be done without awaiting (recording a DTMF digit; ending the call on a hang-up,
on bad audio from the app, or when its bridge closes) is a *job* for the task of the side it
came from (the stream's, the bridge's), which otherwise only waits for its end. Jobs run one
at a time, in the order they came, and those asked for before the side was over still run
after it (an app's hang-up that came with the carrier's ``stop`` still ends the call
``hangup-bot``). A side whose next messages must wait for a job is paused meanwhile: after a
digit, the carrier's next messages are handled once the digit is recorded, in order; after a
hang-up, nothing more is read from the app. A callback that raises (a bug) makes the stream's
task raise it, so it is logged like any failed connection (the bridge's task logs it and ends
the call). TLS websockets, which a poller cannot read, and every websocket where ``epoll`` is
missing, are read by a task each (:meth:`~voicecalld.media.connection.WebSocket.pump`) that
calls the same callbacks. The poller's task is :meth:`MediaStreams.run`, the runtime's
``media`` step (see :mod:`voicecalld.media.poller`).

Admission, in order: the request head within ``server.body_timeout``; a provider that is
enabled (404); ``media.max_streams`` streams admitted and not yet closed (503),
``media.max_pending`` of them not yet started (503) and ``media.max_pending_per_ip`` of those
from one client (429), each counted from the moment it is admitted, so concurrent upgrades
cannot overshoot a limit; then the upgrade (carrier messages over
:data:`MAX_CARRIER_MESSAGE` close the stream 1009), and the carrier's ``start`` message within
``media.start_timeout`` carrying a token voicecalld issued for this call in a webhook answer
(1008 otherwise). Tokens are single-use; a new stream for a call supersedes the old one,
whose close then does not count as the stream going away.

Each call has one bridge, whatever its streams: the call's first stream opens it, to the
call's ``bridge_url`` (else ``media.bridge_url``), and tells the app ``start``. A carrier may
end a stream in the middle of a call and open another (Twilio does, to play ``<Say>``): the
bridge outlives the stream, and the next stream of the call is attached to it (with transcoders
of its own, for its encoding; the bridge's format never changes), so the app sees one
connection, one ``start`` and one ``stop`` per call. SPEC §8 has no message for the switch, and
the app is told none: it hears silence, then the caller again. Between streams the app's audio
has no carrier to go to, and is dropped (counted); its ``mark`` and ``clear`` mean nothing then,
its ``hangup`` still ends the call. The bridge is told ``stop`` and closed when the call's media
is over: the call ended (a stream grace that ran out ends it ``stream-lost``), or voicecalld
shuts down (1001). A bridge that cannot connect, or closes, or sends audio that is not whole
samples, ends the call (logged). Its messages are handled by a task of its own (in the nursery
of :meth:`MediaStreams.run`), whose jobs are those of the app's side, as a stream's task has
those of the carrier's. When the current stream of a live call ends, the manager gives it
``calls.stream_grace`` for a new one before ending the call ``stream-lost``. On shutdown,
streams and bridges still open after ``runtime.drain_timeout`` are closed with 1001 and the
call goes on (a restarted voicecalld reconciles it).

Which side closed matters, so each side's end is told by its own websocket's end callback; a
send to the other side that finds it closed drops the frame, and leaves the ending to that
side's callback. When the bridge is over, it is detached from its stream (whose later audio is
not forwarded) and its delivery paused before the app is told ``stop``, so ``stop`` is the last
thing it hears.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import attrs
import orjson
import trio

from voicecalld.calls.manager import CallManager
from voicecalld.calls.model import Call, EndReason, EventType, State
from voicecalld.carriers.base import (
    Carrier,
    StreamAudio,
    StreamDtmf,
    StreamEvent,
    StreamMark,
    StreamProtocol,
    StreamStarted,
    StreamStopped,
)
from voicecalld.config import Config
from voicecalld.media import handshake
from voicecalld.media.audio import BRIDGE_FORMATS, Format, Framer, Transcoder, frame_bytes
from voicecalld.media.connection import ConnectionClosed, WebSocket, accept, connect, refuse
from voicecalld.media.handshake import HandshakeError
from voicecalld.media.poller import AVAILABLE as POLLER_AVAILABLE
from voicecalld.media.poller import Poller
from voicecalld.media.websocket import CloseCode, Message
from voicecalld.metrics import Metrics
from voicecalld.store.base import StoreError

__all__ = ["MAX_CARRIER_MESSAGE", "MAX_HEAD", "MediaStreams"]

log = logging.getLogger("voicecalld.media")

MAX_HEAD: Final = handshake.MAX_HEAD_SIZE
MAX_CARRIER_MESSAGE: Final = 64 * 1024
"""Largest carrier message: a ``start`` is a few hundred bytes, a 20 ms frame about 300."""
FRAME_MS: Final = 20
FLUSH_EVERY: Final = 250
"""Frames a stream counts before adding them to ``/metrics`` (5 s of audio): a labelled
counter bumped per frame costs about half a microsecond, an attribute of the stream next to
nothing. Drops are added at once."""
MAX_MARK_NAME: Final = 256
PLAYBACK: Final[Format] = ("mulaw", 8000)
"""What every carrier's ``media`` message plays, as voicecalld sets the carriers up: Twilio
takes nothing else, voicecalld's Plivo ``playAudio`` names μ-law 8 kHz, and Telnyx streams are
opened with ``stream_bidirectional_codec=PCMU``. So the application's audio is converted to
this, not to the format the carrier streams to us (Plivo L16, Telnyx PCMA)."""

Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]
Job = Callable[[], Awaitable[object]]
"""What a callback hands the stream's task: anything that must wait (the manager, a close)."""


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define(eq=False, kw_only=True)
class _Worker:
    """What a stream's or a bridge's task shares with its callbacks: the jobs they leave it,
    and why it ends."""

    jobs: deque[Job] = attrs.Factory(deque)
    """What callbacks left to the task, in the order they came."""
    wake: trio.Event = attrs.Factory(trio.Event)
    """Set when a job came, or the side is over, or failed."""
    over: bool = False
    failure: Exception | None = None
    """What a callback raised (a bug): the task raises it."""
    stop_reason: str = ""
    close_code: int = CloseCode.NORMAL

    def ending(self, reason: str, code: int = CloseCode.NORMAL) -> None:
        """Say why it ends, and with which close code: the first cause given is the one the
        carrier, the app and the call's events are told (a bridge that failed is not
        reported as the call ending that followed)."""
        if not self.stop_reason:
            self.stop_reason, self.close_code = reason, code


@attrs.define(eq=False)
class _Stream(_Worker):
    """One carrier media stream, from its upgrade to its close."""

    carrier_ws: WebSocket
    protocol: StreamProtocol
    provider: str
    client: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Covers the whole stream: cancelled when superseded, when its call ends, on shutdown."""
    pending: bool = True
    """Admitted, not yet started: counted against ``max_pending`` and the per-client limit."""
    backlog: list[Message] = attrs.Factory(list)
    """Messages that came in the batch of ``start``, after it."""
    call: Call | None = None
    started: StreamStarted | None = None
    bridge: WebSocket | None = None
    """The call's bridge while this stream is attached to it."""
    to_app: Transcoder | None = None
    """Carrier audio to the bridge's encoding; ``None`` when they are the same."""
    to_carrier: Transcoder | None = None
    """The app's audio to what the carrier plays; ``None`` when they are the same."""
    framer: Framer | None = None
    """Cuts the caller's audio into the bridge's 20 ms frames; set with the bridge."""
    starts_grace: bool = True
    """Whether its end gives the call ``stream_grace`` to get a new one: not when a new one
    superseded it, nor when voicecalld shuts down (the call outlives the daemon)."""
    frames_in: int = 0
    """The app's 20 ms frames (without a bridge, the carrier's audio messages)."""
    frames_out: int = 0
    """The app's audio messages."""
    dropped_in: int = 0
    dropped_out: int = 0
    counted: tuple[int, int, int, int] = (0, 0, 0, 0)
    """The counts above as last added to ``/metrics``."""


@attrs.define(eq=False)
class _Bridge(_Worker):
    """A call's websocket to its application, from the call's first stream to the end of its
    media; its callbacks are bound to this, and find the stream of the moment here."""

    ws: WebSocket
    call: Call
    stream: _Stream | None = None
    """The stream the app's audio goes to; ``None`` between two streams of the call."""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Covers the bridge's task: cancelled on shutdown."""


class MediaStreams:
    """Every carrier media stream of one runtime: admission, life, bridge, draining."""

    def __init__(self, config: Config, manager: CallManager, metrics: Metrics) -> None:
        self.config = config
        self.manager = manager
        self.metrics = metrics
        self._current: dict[str, _Stream] = {}
        """The stream of each call (the newest: older ones are superseded)."""
        self._open: set[_Stream] = set()
        """Upgraded and not yet closed: what draining waits for (with the bridges)."""
        self._bridges: dict[str, _Bridge] = {}
        """The bridge of each call that has one, from its connection to its close."""
        self._nursery: trio.Nursery | None = None
        """Where bridges' tasks run: :meth:`run`'s, since a bridge outlives its streams."""
        self._changed = trio.Event()
        """Set when a stream or a bridge closes (drain waits on it)."""
        self._admitted = 0
        self._pending = 0
        self._pending_by_client: Counter[str] = Counter()
        self._shutting_down = False
        self._trusted = _networks(config)
        self._poller = Poller() if POLLER_AVAILABLE else None
        """Reads every started stream's websockets that are raw sockets (not TLS)."""
        manager.ended_hooks.append(self._call_ended)
        metrics.streams.read = lambda: {(): float(len(self._open))}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The runtime's ``media`` step, for the runtime's whole life: the poller's task, and
        the nursery of the bridges' tasks."""
        async with trio.open_nursery() as nursery:
            if self._poller is not None:
                await nursery.start(self._poller.run)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._trusted = _networks(config)

    # -- admission -------------------------------------------------------------------------

    async def serve(
        self, connection: trio.socket.SocketType | trio.abc.Stream, peer: str, head: bytes = b""
    ) -> None:
        """Serve one connection the front door routed here (nothing of it consumed yet, or
        ``head`` already read from a TLS stream) until its stream ends."""
        try:
            request, leftover = await self._read_request(connection, head)
            carrier = self._carrier(request.path)
            client = self._client(peer, request)
            self._admit(client)
        except (HandshakeError, _Refused) as refused:
            status, why = _refusal(refused)
            self.metrics.streams_refused.inc(reason=str(status))
            log.info("media upgrade refused", extra={"client": peer, "status": status, "why": why})
            await refuse(connection, status, why, getattr(refused, "headers", ()))
            return
        try:
            ws = await accept(connection, request, leftover, max_message_size=MAX_CARRIER_MESSAGE)
        except BaseException as error:
            self._admitted -= 1
            self._unpend(client)
            if isinstance(error, ConnectionClosed):
                return  # the client left during the upgrade
            raise
        stream = _Stream(ws, carrier.stream, carrier.name, client)
        self._open.add(stream)
        try:
            with stream.scope:
                if await self._start(stream):
                    await self._live(stream)
        except trio.Cancelled:  # not by us (ours stop at stream.scope): the runtime is ending
            _going_away(stream)
            raise
        finally:
            self._open.discard(stream)
            self._changed.set()
            self._admitted -= 1
            if stream.pending:
                self._unpend(client)
            with trio.CancelScope(shield=True):
                await self._finish(stream)

    async def _read_request(
        self, connection: trio.socket.SocketType | trio.abc.Stream, head: bytes
    ) -> tuple[handshake.UpgradeRequest, bytes]:
        """Read the request head (bounded in size and time) and parse it."""
        buffer = bytearray(head)
        with trio.move_on_after(self.config.server.body_timeout):
            while (end := handshake.head_length(buffer, MAX_HEAD)) is None:
                if isinstance(connection, trio.abc.Stream):
                    chunk = await connection.receive_some(4096)
                else:
                    chunk = await connection.recv(4096)
                if not chunk:
                    raise _Refused(400, "connection closed before the request head")
                buffer += chunk
            return handshake.parse_request(bytes(buffer[:end])), bytes(buffer[end:])
        raise _Refused(408, "request head too slow")

    def _carrier(self, path: str) -> Carrier:
        provider = path.removeprefix("/media/")
        carrier = self.manager.carriers.get(provider) if "/" not in provider else None
        if carrier is None:
            raise _Refused(404, f"no media stream at {path[:80]!r}")
        return carrier

    def _client(self, peer: str, request: handshake.UpgradeRequest) -> str:
        """The client per-IP limits apply to: the rightmost untrusted X-Forwarded-For hop when
        the peer is a trusted proxy, else the peer."""
        if not self._trusted or not _within(peer, self._trusted):
            return peer
        forwarded = request.header("x-forwarded-for") or ""
        for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
            if not _within(hop, self._trusted):
                return hop
        return peer

    def _admit(self, client: str) -> None:
        """Check the limits and take the stream's place in them, in one step (no ``await``)."""
        media = self.config.media
        if self._shutting_down:
            raise _Refused(503, "voicecalld is shutting down")
        if self._admitted >= media.max_streams:
            raise _Refused(503, "too many media streams")
        if self._pending >= media.max_pending:
            raise _Refused(503, "too many media streams starting")
        if self._pending_by_client[client] >= media.max_pending_per_ip:
            raise _Refused(429, "too many media streams starting from this client")
        self._admitted += 1
        self._pending += 1
        self._pending_by_client[client] += 1

    def _unpend(self, client: str) -> None:
        """A stream of ``client`` is no longer pending (it started, or ended first)."""
        self._pending -= 1
        self._pending_by_client[client] -= 1
        if self._pending_by_client[client] <= 0:
            del self._pending_by_client[client]

    # -- starting --------------------------------------------------------------------------

    async def _start(self, stream: _Stream) -> bool:
        """Wait for the carrier's ``start`` with a valid token; close 1008 otherwise."""
        with trio.move_on_after(self.config.media.start_timeout) as waiting:
            try:
                started = await self._wait_for_start(stream)
            except ConnectionClosed as closed:
                stream.ending(f"carrier closed the stream before starting it ({closed.code})")
                return False
        if waiting.cancelled_caught:
            return await self._refuse_stream(stream, "start-timeout", "no start message in time")
        if started is None:
            return await self._refuse_stream(stream, "malformed", "malformed message")
        stream.started = started
        call = self.manager.redeem_token(started.token)
        if call is None or call.provider != stream.provider or not _same_call(call, started):
            return await self._refuse_stream(stream, "token", "invalid stream token")
        stream.call = call
        self._became_started(stream)
        return True

    async def _wait_for_start(self, stream: _Stream) -> StreamStarted | None:
        """The ``start`` message (messages before it are ignored); ``None`` if one is malformed.

        Whatever came in the same batch after it is kept for the live loop.
        """
        while True:
            batch = await stream.carrier_ws.receive_batch()
            for index, (data, _) in enumerate(batch):
                try:
                    event = stream.protocol.parse(data)
                except ValueError:
                    return None
                if isinstance(event, StreamStarted):
                    stream.backlog = batch[index + 1 :]
                    return event

    async def _refuse_stream(self, stream: _Stream, reason: str, why: str) -> bool:
        self.metrics.streams_refused.inc(reason=reason)
        log.info(
            "media stream refused",
            extra={"provider": stream.provider, "client": stream.client, "why": why},
        )
        stream.ending(why, CloseCode.POLICY_VIOLATION)
        await stream.carrier_ws.close(CloseCode.POLICY_VIOLATION, why)
        return False

    def _became_started(self, stream: _Stream) -> None:
        """The stream is the call's now: no longer pending, and any older one superseded."""
        assert stream.call is not None
        self._unpend(stream.client)
        stream.pending = False
        call_id = stream.call.id
        previous = self._current.get(call_id)
        if previous is not None:
            previous.ending("superseded by a new stream")
            previous.starts_grace = False
            previous.scope.cancel()
        self._current[call_id] = stream
        self.manager.stream_back(call_id)

    # -- a live stream ---------------------------------------------------------------------

    async def _live(self, stream: _Stream) -> None:
        """The stream's task while it is live: join the call's bridge (opened if it has none),
        hand the carrier's websocket to the poller, then run the stream's jobs until its end."""
        call, started = stream.call, stream.started
        assert call is not None and started is not None
        await self.manager.set_state(call.id, State.ACTIVE)
        await self.manager.record(
            call.id, EventType.STREAM_STARTED, {"stream_id": started.stream_id}
        )
        log.info(
            "media stream started",
            extra={"call_id": call.id, "provider": stream.provider, "stream_id": started.stream_id},
        )
        bridge_url = str(call.metadata.get("bridge_url") or self.config.media.bridge_url)
        if bridge_url and not await self._join_bridge(stream, bridge_url):
            return
        async with trio.open_nursery() as nursery:  # only a pump (TLS) runs in it
            try:
                # what came in the batch of the start goes first (and may pause the carrier)
                self._from_carrier(stream, stream.backlog)
                self._deliver(
                    nursery,
                    stream.carrier_ws,
                    partial(self._from_carrier, stream),
                    partial(self._carrier_ended, stream),
                )
                await self._run_jobs(stream)
            finally:
                stream.carrier_ws.pause()  # nothing more is handled
            nursery.cancel_scope.cancel()

    async def _join_bridge(self, stream: _Stream, bridge_url: str) -> bool:
        """Attach the stream to its call's bridge, opening it for the call's first stream;
        end the call if the bridge cannot connect or take the stream's audio."""
        call, started = stream.call, stream.started
        assert call is not None and started is not None and self._nursery is not None
        bridge_format = BRIDGE_FORMATS[self.config.media.bridge_encoding]
        try:
            to_app = Transcoder((started.encoding, started.sample_rate), bridge_format)
            to_carrier = Transcoder(bridge_format, PLAYBACK)
        except ValueError as error:
            log.warning(
                "stream audio cannot be bridged; ending the call",
                extra={"call_id": call.id, "error": str(error)},
            )
            stream.ending("stream audio cannot be bridged")
            await self.manager.end_call(call.id, EndReason.ERROR)
            return False
        stream.to_app = None if to_app.identity else to_app
        stream.to_carrier = None if to_carrier.identity else to_carrier
        stream.framer = Framer(frame_bytes(bridge_format, FRAME_MS))
        bridge = self._bridges.get(call.id)
        if bridge is None:
            bridge = await self._nursery.start(self._run_bridge, stream, bridge_url)
            if bridge is None:
                stream.ending("bridge failed to connect")
                await self.manager.end_call(call.id, EndReason.ERROR)
                return False
        elif not bridge.over:  # else the call is ending: the stream goes without
            _attach(bridge, stream)
        return True

    async def _run_bridge(
        self,
        stream: _Stream,
        bridge_url: str,
        *,
        task_status: trio.TaskStatus[_Bridge | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The bridge's task, for the life of its call's media: connect, tell the app
        ``start`` and attach ``stream``, then run the bridge's jobs until it is over, and tell
        the app ``stop``. Reports the bridge, or ``None`` if it could not connect."""
        call = stream.call
        assert call is not None
        try:
            ws = await connect(bridge_url)
        except (OSError, HandshakeError, trio.TooSlowError) as error:
            log.warning(
                "bridge failed to connect; ending the call",
                extra={"call_id": call.id, "url": bridge_url, "error": str(error)},
            )
            task_status.started(None)
            return
        bridge = _Bridge(ws, call)
        self._bridges[call.id] = bridge
        bridge_format = BRIDGE_FORMATS[self.config.media.bridge_encoding]
        start = {
            "type": "start",
            "call": self.manager.calls.get(call.id, call).to_json(),
            "audio": {
                "encoding": bridge_format[0],
                "sample_rate": bridge_format[1],
                "channels": 1,
                "frame_ms": FRAME_MS,
            },
        }
        self._tell_app(ws, start)  # if the bridge closed already, its callback will say
        _attach(bridge, stream)
        task_status.started(bridge)
        try:
            with bridge.scope:
                async with trio.open_nursery() as nursery:  # only a pump (TLS) runs in it
                    self._deliver(
                        nursery,
                        ws,
                        partial(self._from_bridge, bridge),
                        partial(self._bridge_ended, bridge),
                    )
                    try:
                        await self._run_jobs(bridge)
                    finally:
                        ws.pause()  # nothing more is handled: ``stop`` is the last word
                    nursery.cancel_scope.cancel()
        except trio.Cancelled:  # not by us (drain's stop at bridge.scope): the runtime is ending
            bridge.ending("voicecalld is shutting down", CloseCode.GOING_AWAY)
            raise
        except Exception:  # a callback's bug: logged, and the call cannot go on without it
            log.exception("bridge failed; ending the call", extra={"call_id": call.id})
            bridge.ending("bridge failed")
            if bridge.stream is not None:
                bridge.stream.ending("bridge failed")
            await self.manager.end_call(call.id, EndReason.ERROR)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish_bridge(bridge)

    def _deliver(
        self,
        nursery: trio.Nursery,
        ws: WebSocket,
        on_messages: Callable[[list[Message]], object],
        on_end: Callable[[ConnectionClosed | Exception], object],
    ) -> None:
        """The poller reads ``ws`` when it can (a raw socket, on Linux), else a task does."""
        if self._poller is not None and ws.pollable:
            ws.deliver(self._poller, on_messages, on_end)
        else:
            nursery.start_soon(ws.pump, on_messages, on_end)

    async def _run_jobs(self, worker: _Worker) -> None:
        """Run what the callbacks could not do without waiting, in the order they asked, until
        the stream (or bridge) is over and none is left; raise what a callback raised."""
        while True:
            if worker.failure is not None:
                raise worker.failure
            if worker.jobs:  # first, even when over: an app's hang-up must still end the call
                await worker.jobs.popleft()()
            elif worker.over:
                return
            else:
                worker.wake = trio.Event()
                await worker.wake.wait()

    def _later(self, worker: _Worker, job: Job) -> None:
        worker.jobs.append(job)
        worker.wake.set()

    def _over(self, worker: _Worker) -> None:
        """The stream (or bridge) ends: its task runs the jobs asked for until then (and any
        that what is already read asks for), then closes it."""
        worker.over = True
        worker.wake.set()

    # -- from the carrier ------------------------------------------------------------------

    def _from_carrier(self, stream: _Stream, batch: list[Message]) -> bool:
        """Carrier → app, the hot path: one batch of the carrier's messages.

        Per frame: parse, convert (nothing for the usual μ-law to μ-law), one synchronous send
        when the chunk is one 20 ms frame (else as many as the framer cuts from it).
        Returns whether the whole batch was handled: not when the stream is over, nor when
        the carrier waits for a DTMF digit to be recorded (then the rest goes after it).
        """
        parse, convert, framer = stream.protocol.parse, stream.to_app, stream.framer
        send = stream.bridge.send_binary if stream.bridge is not None else None
        size, kept = (0, b"") if framer is None else (framer.size, framer.rest)
        frames = dropped = 0
        try:
            for index, (data, _) in enumerate(batch):
                event = parse(data)
                if type(event) is StreamAudio:
                    if send is None:
                        frames += 1
                        continue
                    audio = event.audio if convert is None else convert(event.audio)
                    if len(audio) == size and not kept:  # one frame: as it came
                        frames += 1
                        try:
                            if not send(audio):
                                dropped += 1
                        except ConnectionClosed:  # the bridge's own callback tells its end
                            dropped += 1
                    else:
                        assert framer is not None  # set with the bridge
                        cut = framer.cut(audio)
                        frames += len(cut)
                        dropped += _send_frames(send, cut)
                elif not self._carrier_event(stream, event, batch[index + 1 :]):
                    return False
            return True
        except ValueError as malformed:
            log.info(
                "malformed carrier media message; closing",
                extra={"provider": stream.provider, "error": str(malformed)},
            )
            stream.ending("malformed carrier message", CloseCode.POLICY_VIOLATION)
            self._over(stream)
            return False
        finally:
            stream.frames_in += frames
            stream.dropped_in += dropped
            if dropped or stream.frames_in - stream.counted[0] >= FLUSH_EVERY:
                self._count(stream)

    def _carrier_event(self, stream: _Stream, event: StreamEvent, rest: list[Message]) -> bool:
        """Anything from the carrier but audio; False when the carrier's next messages must
        wait (``rest``, those after this one in its batch, included)."""
        if isinstance(event, StreamStopped):
            stream.ending("carrier stopped the stream")
            self._over(stream)
            return False
        if isinstance(event, StreamDtmf):
            _to_app(stream, {"type": "dtmf", "digit": event.digit})
            stream.carrier_ws.pause()
            self._later(stream, partial(self._record_dtmf, stream, event.digit, rest))
            return False
        if isinstance(event, StreamMark):
            _to_app(stream, {"type": "mark", "name": event.name})
        return True

    async def _record_dtmf(self, stream: _Stream, digit: str, rest: list[Message]) -> None:
        """Record a digit the caller pressed, then go on with the carrier's messages."""
        assert stream.call is not None
        await self.manager.record(stream.call.id, EventType.DTMF, {"digit": digit})
        if stream.over:
            return  # ended meanwhile (the app hung up): the carrier's rest is not handled
        if self._from_carrier(stream, rest):
            stream.carrier_ws.resume()

    def _carrier_ended(self, stream: _Stream, end: ConnectionClosed | Exception) -> None:
        if isinstance(end, ConnectionClosed):
            stream.ending(f"carrier closed the stream ({end.code})")
            self._over(stream)
        else:
            self._fail(stream, end)

    # -- from the app ----------------------------------------------------------------------

    def _from_bridge(self, bridge: _Bridge, batch: list[Message]) -> None:
        """App → carrier: one batch of the app's messages, to the bridge's stream of the
        moment. A hang-up, audio that is not whole samples, or the bridge's close end the call
        (a job of the bridge's task)."""
        stream = bridge.stream
        if stream is None:
            self._between_streams(bridge, batch)
            return
        assert stream.started is not None
        stream_id, media = stream.started.stream_id, stream.protocol.media
        send, convert = stream.carrier_ws.send_text, stream.to_carrier
        frames = dropped = 0
        try:
            if len(batch) > 1 and (cleared := _cleared(batch)):
                # audio before a clear is dropped here: the carrier would drop it anyway
                frames = sum(1 for _, is_text in batch[:cleared] if not is_text)
                for data, is_text in batch[:cleared]:
                    if is_text and not self._app_command(bridge, stream, data):
                        return
                batch = batch[cleared:]
            for data, is_text in batch:
                if is_text:
                    if not self._app_command(bridge, stream, data):
                        return
                    continue
                frames += 1
                try:
                    audio = data if convert is None else convert(data)
                except ValueError as error:
                    self._bad_audio(bridge, str(error))
                    return
                try:
                    if not send(media(stream_id, audio)):
                        dropped += 1
                except ConnectionClosed:  # the carrier's own callback tells its end
                    dropped += 1
        finally:
            stream.frames_out += frames
            stream.dropped_out += dropped
            if dropped or stream.frames_out - stream.counted[1] >= FLUSH_EVERY:
                self._count(stream)

    def _between_streams(self, bridge: _Bridge, batch: list[Message]) -> None:
        """The app's messages while its call has no stream: its audio has no carrier to go to
        (dropped, counted), its marks and clears nothing to act on; a hang-up still counts."""
        audio = 0
        try:
            for data, is_text in batch:
                if not is_text:
                    audio += 1
                elif not self._app_command(bridge, None, data):
                    return
        finally:
            if audio:
                self.metrics.media_frames.inc(audio, direction="out")
                self.metrics.media_dropped.inc(audio, direction="out")

    def _to_carrier(self, stream: _Stream, message: bytes) -> None:
        """A message the carrier must get (a mark, a clear), behind the audio that waits:
        never dropped for audio's sake."""
        try:
            if not stream.carrier_ws.send_text(message, droppable=False):
                stream.dropped_out += 1
        except ConnectionClosed:
            stream.dropped_out += 1

    def _app_command(self, bridge: _Bridge, stream: _Stream | None, data: bytes) -> bool:
        """One text message from the app (``stream`` is the bridge's, if it has one now);
        False when the app hung up."""
        command = _command(data)
        kind = command.get("type")
        if kind == "hangup":
            hangup = partial(self._end_call_now, bridge, EndReason.HANGUP_BOT)
            self._end_call(bridge, "the application hung up", hangup)
            return False
        if stream is None:
            return True
        assert stream.started is not None
        stream_id, protocol = stream.started.stream_id, stream.protocol
        if kind == "clear":
            # barge-in: the audio still waiting for the carrier must not play either
            stream.carrier_ws.discard_queued()
            self._to_carrier(stream, protocol.clear(stream_id))
        elif kind == "mark" and _mark_name(command.get("name")):
            self._to_carrier(stream, protocol.mark(stream_id, command["name"]))
        return True

    def _bad_audio(self, bridge: _Bridge, why: str) -> None:
        log.warning(
            "bridge sent audio that is not whole samples; ending the call",
            extra={"call_id": bridge.call.id, "error": why},
        )
        self._end_call(bridge, "bridge sent invalid audio", partial(self._refuse_audio, bridge))

    async def _refuse_audio(self, bridge: _Bridge) -> None:
        await bridge.ws.close(CloseCode.INVALID_DATA, "audio must be whole samples")
        await self._end_call_now(bridge, EndReason.ERROR)

    def _bridge_ended(self, bridge: _Bridge, end: ConnectionClosed | Exception) -> None:
        if not isinstance(end, ConnectionClosed):
            self._fail(bridge, end)
            return
        log.warning(
            "bridge closed; ending the call",
            extra={"call_id": bridge.call.id, "code": end.code, "reason": end.reason},
        )
        self._end_call(
            bridge, "bridge closed", partial(self._end_call_now, bridge, EndReason.ERROR)
        )

    def _end_call(self, bridge: _Bridge, why: str, job: Job) -> None:
        """Read the app no more, and have the bridge's task do ``job`` (end the call): ``why``
        is what the app and the stream of the moment are told."""
        bridge.ending(why)
        if bridge.stream is not None:
            bridge.stream.ending(why)
        bridge.ws.pause()
        self._later(bridge, job)

    async def _end_call_now(self, bridge: _Bridge, reason: EndReason) -> None:
        await self.manager.end_call(bridge.call.id, reason)
        self._over(bridge)  # the call's end says so too, unless it had ended already

    def _fail(self, worker: _Worker, error: Exception) -> None:
        """A callback raised (a bug): the stream's (or bridge's) task raises it, as a loop of
        its own would (the first one: what followed may be its consequence)."""
        if worker.failure is None:
            worker.failure = error
        worker.wake.set()

    # -- the end of a stream -----------------------------------------------------------------

    async def _finish(self, stream: _Stream) -> None:
        """After a stream (shielded): leave the bridge (which goes on with the call), count
        the stream, let the manager start the grace period, then close the carrier's websocket
        and record the end, side by side."""
        stream.ending("stream ended")
        reason = stream.stop_reason
        self._count(stream)
        call = stream.call
        if call is not None:
            bridge = self._bridges.get(call.id)
            if bridge is not None and bridge.stream is stream:
                bridge.stream = None
            if self._current.get(call.id) is stream:
                del self._current[call.id]
                if stream.starts_grace:
                    self.manager.stream_gone(call.id)
            log.info(
                "media stream ended",
                extra={
                    "call_id": call.id,
                    "reason": reason,
                    "frames_in": stream.frames_in,
                    "frames_out": stream.frames_out,
                },
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.carrier_ws.close, stream.close_code, reason[:120])
            if call is not None:
                nursery.start_soon(self._record_end, call.id, reason)

    async def _finish_bridge(self, bridge: _Bridge) -> None:
        """After a bridge (shielded): detach it from its stream, if it still has one (whose
        later audio then goes nowhere), tell the app ``stop`` and close."""
        bridge.ending("the call's media ended")
        if self._bridges.get(bridge.call.id) is bridge:
            del self._bridges[bridge.call.id]
        if bridge.stream is not None:
            bridge.stream.bridge = None
            bridge.stream = None
        bridge.ws.pause()
        self._tell_app(bridge.ws, {"type": "stop", "reason": bridge.stop_reason})
        await bridge.ws.close(bridge.close_code, bridge.stop_reason[:120])
        self._changed.set()
        log.info("bridge closed", extra={"call_id": bridge.call.id, "reason": bridge.stop_reason})

    def _tell_app(self, ws: WebSocket, message: dict[str, Any]) -> None:
        """``start`` or ``stop``, which the app must get: as :func:`_to_app` sends the rest."""
        with contextlib.suppress(ConnectionClosed):  # the bridge's own callback tells its end
            if not ws.send_text(orjson.dumps(message), droppable=False):
                self.metrics.media_dropped.inc(direction="in")

    async def _record_end(self, call_id: str, reason: str) -> None:
        try:
            await self.manager.record(call_id, EventType.STREAM_STOPPED, {"reason": reason})
        except StoreError as error:  # the runtime is going down: the closes still go out
            log.warning("stream end not recorded", extra={"call_id": call_id, "error": str(error)})

    def _count(self, stream: _Stream) -> None:
        """Add what a stream forwarded and dropped since the last time to ``/metrics``."""
        now = (stream.frames_in, stream.frames_out, stream.dropped_in, stream.dropped_out)
        frames_in, frames_out, dropped_in, dropped_out = (
            a - b for a, b in zip(now, stream.counted, strict=True)
        )
        stream.counted = now
        if frames_in:
            self.metrics.media_frames.inc(frames_in, direction="in")
        if frames_out:
            self.metrics.media_frames.inc(frames_out, direction="out")
        if dropped_in:
            self.metrics.media_dropped.inc(dropped_in, direction="in")
        if dropped_out:
            self.metrics.media_dropped.inc(dropped_out, direction="out")

    # -- endings from elsewhere ----------------------------------------------------------------

    def _call_ended(self, call: Call) -> None:
        why = f"call ended ({call.end_reason})"
        stream = self._current.get(call.id)
        if stream is not None:
            stream.ending(why)
            stream.scope.cancel()
        bridge = self._bridges.get(call.id)
        if bridge is not None:
            bridge.ending(why)
            self._over(bridge)

    async def drain(self, timeout: float) -> None:
        """SIGTERM: let streams and bridges run up to ``timeout`` seconds, then close them
        with 1001.

        The calls go on: shutting down is not their streams going away.
        """
        with trio.move_on_after(timeout):
            while self._open or self._bridges:
                self._changed = trio.Event()
                await self._changed.wait()
        self._shutting_down = True
        for stream in list(self._open):
            _going_away(stream)
            stream.scope.cancel()
        for bridge in list(self._bridges.values()):
            bridge.ending("voicecalld is shutting down", CloseCode.GOING_AWAY)
            bridge.scope.cancel()
        while self._open or self._bridges:
            self._changed = trio.Event()
            await self._changed.wait()


def _going_away(stream: _Stream) -> None:
    stream.ending("voicecalld is shutting down", CloseCode.GOING_AWAY)
    stream.starts_grace = False


def _attach(bridge: _Bridge, stream: _Stream) -> None:
    """From now on the app hears ``stream`` and is played to it (its transcoders are set)."""
    stream.bridge = bridge.ws
    bridge.stream = stream


def _refusal(refused: HandshakeError | _Refused) -> tuple[int, str]:
    if isinstance(refused, HandshakeError):
        return refused.status, refused.message
    return refused.status, str(refused)


def _same_call(call: Call, started: StreamStarted) -> bool:
    """A token belongs to one call: when the carrier names its call, it must be that one."""
    return (
        not started.provider_call_id
        or not call.provider_call_id
        or started.provider_call_id in (call.provider_call_id, call.metadata.get("request_id"))
    )


def _cleared(batch: list[Message]) -> int:
    """The index of the last ``clear`` in ``batch`` (0 if none): audio before it is dropped
    here, since the carrier would drop it on the clear anyway."""
    for index in range(len(batch) - 1, 0, -1):
        data, is_text = batch[index]
        if is_text and _command(data).get("type") == "clear":
            return index
    return 0


def _command(data: bytes) -> dict[str, Any]:
    try:
        command = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return command if isinstance(command, dict) else {}


def _mark_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_MARK_NAME


def _to_app(stream: _Stream, message: dict[str, Any]) -> None:
    """A message the app must get (a digit, a mark), if the stream is attached to a bridge
    still open: behind the audio that waits, never dropped for its sake."""
    if stream.bridge is not None:
        with contextlib.suppress(ConnectionClosed):  # the bridge's own callback tells its end
            if not stream.bridge.send_text(orjson.dumps(message), droppable=False):
                stream.dropped_in += 1


def _send_frames(send: Callable[[bytes], bool], frames: list[bytes]) -> int:
    """Send each of ``frames`` (audio); how many were dropped."""
    dropped = 0
    for frame in frames:
        try:
            if not send(frame):
                dropped += 1
        except ConnectionClosed:  # the bridge's own callback tells its end
            dropped += 1
    return dropped


def _networks(config: Config) -> Networks:
    return [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]


def _within(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
