"""Carrier media streams on ``/media/{provider}``, and their bridge to the application (SPEC §8).

The front door hands this module every connection whose first bytes are ``GET /media/``; from
there to the application and back nothing else runs: per call, one task reads the carrier's
websocket and writes straight to the bridge's, and one reads the bridge and writes straight to
the carrier. No channel, no helper task per frame; sends never block (a full outgoing buffer
drops the frame, counted in ``/metrics``), so a slow side costs audio, never memory.

Admission, in order: the request head within ``server.body_timeout``; a provider that is
enabled (404); ``media.max_streams`` open streams (503), ``media.max_pending`` streams not yet
started (503) and ``media.max_pending_per_ip`` of those from one client (429); then the upgrade,
and the carrier's ``start`` message within ``media.start_timeout`` carrying a token voicecalld
issued for this call in a webhook answer (1008 otherwise). Tokens are single-use; a new stream
for a call supersedes the old one, whose close then does not count as the stream going away.

When the current stream of a live call ends, the manager gives it ``calls.stream_grace`` for a
new one before ending the call ``stream-lost``. A bridge that cannot connect, or closes, ends the
call (logged); a carrier stream that ends sends ``stop`` to the application.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter
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
    StreamMark,
    StreamProtocol,
    StreamStarted,
    StreamStopped,
)
from voicecalld.config import Config
from voicecalld.media import handshake
from voicecalld.media.audio import BRIDGE_FORMATS, Transcoder
from voicecalld.media.connection import ConnectionClosed, WebSocket, accept, connect, refuse
from voicecalld.media.handshake import HandshakeError
from voicecalld.media.websocket import CloseCode
from voicecalld.metrics import Metrics

__all__ = ["MAX_HEAD", "MediaStreams"]

log = logging.getLogger("voicecalld.media")

MAX_HEAD: Final = 16 * 1024
FRAME_MS: Final = 20


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define(eq=False)
class _Stream:
    """One carrier media stream, from its upgrade to its close."""

    carrier_ws: WebSocket
    protocol: StreamProtocol
    provider: str
    client: str
    call: Call | None = None
    started: StreamStarted | None = None
    bridge: WebSocket | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    superseded: bool = False
    close_code: int = CloseCode.NORMAL
    stop_reason: str = "stream ended"
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0
    dropped_out: int = 0


class MediaStreams:
    def __init__(self, config: Config, manager: CallManager, metrics: Metrics) -> None:
        self.config = config
        self.manager = manager
        self.metrics = metrics
        self._current: dict[str, _Stream] = {}
        """The stream of each call (the newest: older ones are superseded)."""
        self._open: set[_Stream] = set()
        self._changed = trio.Event()
        """Set when a stream closes (drain waits on it)."""
        self._pending = 0
        self._pending_by_client: Counter[str] = Counter()
        self._trusted = self._networks(config)
        manager.ended_hooks.append(self._call_ended)
        metrics.streams.read = lambda: {(): float(len(self._open))}

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._trusted = self._networks(config)

    @staticmethod
    def _networks(config: Config) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]

    # -- admission -------------------------------------------------------------------------

    async def serve(
        self, connection: trio.socket.SocketType | trio.abc.Stream, peer: str, head: bytes = b""
    ) -> None:
        """Serve one connection the front door routed here (nothing of it consumed yet, or
        ``head`` already read from a TLS stream)."""
        try:
            request, leftover = await self._read_request(connection, head)
            provider = request.path.removeprefix("/media/").split("/")[0]
            carrier: Carrier | None = self.manager.carriers.get(provider)
            if carrier is None:
                raise _Refused(404, f"provider {provider!r} is not enabled")
            client = self._client(peer, request)
            self._admit(client)
        except HandshakeError as refused:
            self.metrics.streams_refused.inc(reason=str(refused.status))
            log.info(
                "media upgrade refused",
                extra={"client": peer, "status": refused.status, "why": refused.message},
            )
            await refuse(connection, refused.status, refused.message, refused.headers)
            return
        except _Refused as refused:
            self.metrics.streams_refused.inc(reason=str(refused.status))
            log.info(
                "media upgrade refused",
                extra={"client": peer, "status": refused.status, "why": str(refused)},
            )
            await refuse(connection, refused.status, str(refused))
            return
        try:
            ws = await accept(connection, request, leftover)
            stream = _Stream(ws, carrier.stream, provider, client)
            async with ws:
                await self._run(stream)
        except ConnectionClosed:
            pass

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
        media = self.config.media
        if len(self._open) >= media.max_streams:
            raise _Refused(503, "too many media streams")
        if self._pending >= media.max_pending:
            raise _Refused(503, "too many media streams starting")
        if self._pending_by_client[client] >= media.max_pending_per_ip:
            raise _Refused(429, "too many media streams starting from this client")

    # -- a stream's life ---------------------------------------------------------------------

    async def _run(self, stream: _Stream) -> None:
        self._open.add(stream)
        try:
            if not await self._start(stream):
                return
            assert stream.call is not None and stream.started is not None
            with stream.scope:
                await self._stream_live(stream)
        finally:
            self._open.discard(stream)
            self._changed.set()
            await self._finish(stream)

    async def _start(self, stream: _Stream) -> bool:
        """Wait for the carrier's ``start`` with a valid token; close 1008 otherwise."""
        self._pending += 1
        self._pending_by_client[stream.client] += 1
        try:
            with trio.move_on_after(self.config.media.start_timeout):
                while stream.started is None:
                    for message in await stream.carrier_ws.receive_batch():
                        try:
                            event = stream.protocol.parse(message.data)
                        except ValueError:
                            await stream.carrier_ws.close(
                                CloseCode.POLICY_VIOLATION, "malformed message"
                            )
                            return False
                        if isinstance(event, StreamStarted):
                            stream.started = event
                            break
            if stream.started is None:
                log.info(
                    "media stream never started",
                    extra={"provider": stream.provider, "client": stream.client},
                )
                await stream.carrier_ws.close(
                    CloseCode.POLICY_VIOLATION, "no start message in time"
                )
                return False
            call = self.manager.redeem_token(stream.started.token)
            if (
                call is None
                or call.provider != stream.provider
                or not _same_call(call, stream.started)
            ):
                log.info(
                    "media stream refused: bad token",
                    extra={"provider": stream.provider, "client": stream.client},
                )
                self.metrics.streams_refused.inc(reason="token")
                await stream.carrier_ws.close(CloseCode.POLICY_VIOLATION, "invalid stream token")
                return False
        finally:
            self._pending -= 1
            self._pending_by_client[stream.client] -= 1
            if self._pending_by_client[stream.client] <= 0:
                del self._pending_by_client[stream.client]
        stream.call = call
        previous = self._current.get(call.id)
        if previous is not None:  # a new stream for the call supersedes the old one
            previous.superseded = True
            previous.stop_reason = "superseded"
            previous.scope.cancel()
        self._current[call.id] = stream
        self.manager.stream_back(call.id)
        await self.manager.set_state(call.id, State.ACTIVE)
        await self.manager.record(
            call.id, EventType.STREAM_STARTED, {"stream_id": stream.started.stream_id}
        )
        log.info(
            "media stream started",
            extra={"call_id": call.id, "stream_id": stream.started.stream_id},
        )
        return True

    async def _stream_live(self, stream: _Stream) -> None:
        assert stream.call is not None and stream.started is not None
        bridge_url = str(stream.call.metadata.get("bridge_url") or self.config.media.bridge_url)
        if not bridge_url:
            await self._carrier_loop(stream, None)
            return
        encoding = self.config.media.bridge_encoding
        try:
            stream.bridge = await connect(bridge_url)
        except (OSError, HandshakeError, trio.TooSlowError, ValueError) as error:
            log.warning(
                "bridge failed to connect; ending the call",
                extra={"call_id": stream.call.id, "url": bridge_url, "error": str(error)},
            )
            stream.stop_reason = "bridge failed"
            await self.manager.end_call(stream.call.id, EndReason.ERROR)
            return
        bridge_format = BRIDGE_FORMATS[encoding]
        to_app = Transcoder((stream.started.encoding, stream.started.sample_rate), bridge_format)
        to_carrier = Transcoder(
            bridge_format, (stream.started.encoding, stream.started.sample_rate)
        )
        start = {
            "type": "start",
            "call": stream.call.to_json(),
            "audio": {
                "encoding": bridge_format[0] if encoding == "mulaw" else "pcm16",
                "sample_rate": bridge_format[1],
                "channels": 1,
                "frame_ms": FRAME_MS,
            },
        }
        stream.bridge.send_text(orjson.dumps(start))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._bridge_loop, stream, to_carrier, nursery.cancel_scope)
            await self._carrier_loop(stream, to_app)
            nursery.cancel_scope.cancel()

    async def _carrier_loop(self, stream: _Stream, to_app: Transcoder | None) -> None:
        """Carrier → app: the hot path. Returns when the carrier's stream ends."""
        carrier_ws, protocol, bridge = stream.carrier_ws, stream.protocol, stream.bridge
        assert stream.call is not None
        call_id = stream.call.id
        try:
            while True:
                for message in await carrier_ws.receive_batch():
                    event = protocol.parse(message.data)
                    if isinstance(event, StreamAudio):
                        stream.frames_in += 1
                        if (
                            bridge is not None
                            and to_app is not None
                            and not bridge.send_binary(to_app(event.audio))
                        ):
                            stream.dropped_in += 1
                    elif isinstance(event, StreamDtmf):
                        await self.manager.record(call_id, EventType.DTMF, {"digit": event.digit})
                        if bridge is not None:
                            bridge.send_text(orjson.dumps({"type": "dtmf", "digit": event.digit}))
                    elif isinstance(event, StreamMark):
                        if bridge is not None:
                            bridge.send_text(orjson.dumps({"type": "mark", "name": event.name}))
                    elif isinstance(event, StreamStopped):
                        stream.stop_reason = "carrier stopped the stream"
                        return
        except ValueError as malformed:
            log.info(
                "malformed carrier media message; closing",
                extra={"call_id": call_id, "error": str(malformed)},
            )
            stream.close_code = CloseCode.POLICY_VIOLATION
        except ConnectionClosed:
            stream.stop_reason = "carrier closed the stream"

    async def _bridge_loop(
        self, stream: _Stream, to_carrier: Transcoder, scope: trio.CancelScope
    ) -> None:
        """App → carrier. A bridge that closes or fails ends the call."""
        bridge, carrier_ws, protocol = stream.bridge, stream.carrier_ws, stream.protocol
        assert bridge is not None and stream.call is not None and stream.started is not None
        stream_id, call_id = stream.started.stream_id, stream.call.id
        try:
            while True:
                for message in await bridge.receive_batch():
                    if not message.is_text:
                        stream.frames_out += 1
                        if not carrier_ws.send_text(
                            protocol.media(stream_id, to_carrier(message.data))
                        ):
                            stream.dropped_out += 1
                        continue
                    command = _command(message.data)
                    kind = command.get("type")
                    if kind == "clear":
                        carrier_ws.send_text(protocol.clear(stream_id))
                    elif kind == "mark" and isinstance(command.get("name"), str):
                        carrier_ws.send_text(protocol.mark(stream_id, command["name"]))
                    elif kind == "hangup":
                        stream.stop_reason = "application hung up"
                        await self.manager.end_call(call_id, EndReason.HANGUP_BOT)
                        return
        except ConnectionClosed as closed:
            if stream.call.id in self.manager.calls and not stream.superseded:
                log.warning(
                    "bridge closed; ending the call",
                    extra={"call_id": call_id, "code": closed.code},
                )
                stream.stop_reason = "bridge closed"
                await self.manager.end_call(call_id, EndReason.ERROR)
        scope.cancel()

    async def _finish(self, stream: _Stream) -> None:
        """After a stream: tell the app, count, and let the manager start the grace period."""
        call = stream.call
        self._count(stream)
        if stream.bridge is not None:
            with contextlib.suppress(ConnectionClosed):
                stop = {"type": "stop", "reason": stream.stop_reason}
                stream.bridge.send_text(orjson.dumps(stop))
            with trio.CancelScope(shield=True):
                await stream.bridge.close()
        if call is None:
            return
        if self._current.get(call.id) is stream:
            del self._current[call.id]
            if not stream.superseded:
                self.manager.stream_gone(call.id)
        with trio.CancelScope(shield=True):
            await self.manager.record(
                call.id, EventType.STREAM_STOPPED, {"reason": stream.stop_reason}
            )
        with trio.CancelScope(shield=True):
            await stream.carrier_ws.close(stream.close_code, stream.stop_reason[:120])

    def _count(self, stream: _Stream) -> None:
        metrics = self.metrics
        metrics.media_frames.inc(stream.frames_in, direction="in")
        metrics.media_frames.inc(stream.frames_out, direction="out")
        if stream.dropped_in:
            metrics.media_dropped.inc(stream.dropped_in, direction="in")
        if stream.dropped_out:
            metrics.media_dropped.inc(stream.dropped_out, direction="out")

    # -- endings -----------------------------------------------------------------------------

    def _call_ended(self, call: Call) -> None:
        stream = self._current.get(call.id)
        if stream is not None:
            stream.stop_reason = f"call ended ({call.end_reason})"
            stream.scope.cancel()

    async def drain(self, timeout: float) -> None:
        """SIGTERM: let live streams run up to ``timeout`` seconds, then close them with 1001."""
        with trio.move_on_after(timeout):
            while self._open:
                self._changed = trio.Event()
                await self._changed.wait()
        for stream in list(self._open):
            stream.close_code = CloseCode.GOING_AWAY
            stream.stop_reason = "voicecalld is shutting down"
            stream.superseded = True  # shutting down is not the stream going away
            stream.scope.cancel()


def _same_call(call: Call, started: StreamStarted) -> bool:
    """A token belongs to one call: when the carrier names its call, it must be that one."""
    return (
        not started.provider_call_id
        or not call.provider_call_id
        or started.provider_call_id
        in (
            call.provider_call_id,
            call.metadata.get("request_id"),
        )
    )


def _command(data: bytes) -> dict[str, Any]:
    try:
        command = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return command if isinstance(command, dict) else {}


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
