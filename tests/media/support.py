"""Helpers for the media-stream tests: the daemon with every carrier, a bridge app, websockets.

Everything runs over real loopback sockets: the daemon of :mod:`voicecalld.testing` (webhooks
and ``/media/{provider}`` on one port), the carrier simulator's REST surface for the hang-ups it
owes, and a :class:`BridgeApp` standing in for the application at ``media.bridge_url``. Both
ends the tests play, the carriers' streams and the app, run on trio-websocket (wsproto, for a
carrier that must write its upgrade and messages in one go), never on voicecalld's own codec:
every test is the daemon against an independent websocket implementation.

A :class:`Peer` reads one message at a time; every wait is bounded (``WAIT`` seconds) so a
missing message fails the test instead of hanging it. Its :class:`Socket` (``peer.ws``) sends
without awaiting, as the tests write (``carrier.ws.send_text(...)``): messages queue, in order,
for one writer task, and what a test sent between two awaits goes out in one write, so that
voicecalld reads it together (trio-websocket writes each message on its own: the writer holds
the socket's writes back meanwhile, see :class:`HeldStream`). :meth:`Socket.wait_flushed` waits
until they have gone to the kernel. Every websocket a test opens is closed when its
:class:`Rig` ends, and its socket with it: a socket left to the garbage collector is a
ResourceWarning.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, cast

import attrs
import orjson
import trio
from nacl.signing import SigningKey
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)
from twilio.request_validator import RequestValidator
from wsproto import ConnectionType
from wsproto.events import Request
from wsproto.frame_protocol import FrameProtocol
from wsproto.handshake import H11Handshake

from tests.carriers.helpers import sample
from tests.support import wait_until
from voicecalld.calls.model import Call
from voicecalld.carriers import mock
from voicecalld.carriers.telnyx.wire import decode_client_state
from voicecalld.media.handshake import HandshakeError
from voicecalld.sim.rest import FakeCarriers, RecordedRequest, serve_fake_carriers
from voicecalld.sim.state import SimCall, SimStatus
from voicecalld.testing import Daemon, free_port, make_config, running

WAIT: Final = 5.0
"""Seconds any one expected message may take before the test fails. Under an autojump clock,
waits that span a timer pass ``within=math.inf``: the clock jumps to the nearest deadline
whenever the daemon waits for its store's thread, and a test's own deadline must not be it."""
CLOSE_TIMEOUT: Final = 1.0
"""Seconds a closing websocket waits for its queue to drain and the peer's close frame."""
API_TOKEN: Final = "test-token"
"""``make_config``'s API token: also the mock carrier's webhook secret."""
NO_GRACE: Final = {"stream_grace": 0.0}
"""``calls`` settings for a test whose call ends as soon as its stream does: a call's bridge
outlives its stream for ``stream_grace``, waiting for the next one, and tells the app ``stop``
only when the call's media is over."""
STREAM_LOST: Final = {"type": "stop", "reason": "call ended (stream-lost)"}
"""What the app hears when its call's stream ended and no other came within the grace."""


@attrs.frozen
class Message:
    """One websocket message: ``data`` is UTF-8 when ``is_text``."""

    data: bytes
    is_text: bool


class Closed(Exception):
    """The websocket is closed: raised by :meth:`Socket.receive` once it is.

    ``code`` and ``reason`` are those of the close frame that started the closing handshake,
    whichever side sent it (1006 when the connection ended without one); ``by_peer`` tells
    which side that was (trio-websocket's own closes, 1002 or 1009, count as the peer's).
    """

    def __init__(self, code: int, reason: str, by_peer: bool) -> None:
        super().__init__(f"websocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class HeldStream(trio.abc.Stream):
    """A socket stream whose writes can be held back, to go out together in one write.

    trio-websocket writes every message (and every pong or close answer of its reader task)
    with its own ``send_all``; between :meth:`hold` and :meth:`release` they wait here.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.socket_stream = stream
        self._held: bytearray | None = None
        self._lock = trio.Lock()
        """One write at a time: a release, or a write of trio-websocket's reader task."""

    def hold(self) -> None:
        self._held = bytearray()

    async def release(self) -> None:
        """Write what was held back, in one write, and stop holding."""
        async with self._lock:
            held, self._held = self._held, None
            if held:
                await self.socket_stream.send_all(held)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            if self._held is None:
                await self.socket_stream.send_all(data)
            else:
                self._held += data

    async def wait_send_all_might_not_block(self) -> None:
        await self.socket_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.socket_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.socket_stream.aclose()


class Socket:
    """A trio-websocket connection, driven as the tests drive it.

    Sends never await: they queue, in order and without bound, for :meth:`run`, the one task
    that sends them (so ``True``, always: a test's sends are never dropped). A send after
    :meth:`close` raises ``trio.ClosedResourceError``; one the peer no longer takes (it closed)
    is dropped, as it would be on the wire.
    """

    def __init__(self, connection: WebSocketConnection, stream: HeldStream) -> None:
        self.connection = connection
        self._stream = stream
        self._queue, self._outbox = trio.open_memory_channel[str | bytes](math.inf)
        self._unsent = 0
        self._flushed = trio.lowlevel.ParkingLot()
        self._close: tuple[int, str] | None = None
        """The close asked for, once :meth:`close` is called."""
        self._ours = False
        """Whether our close frame started the closing handshake (not the peer's)."""
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    def send_text(self, data: bytes) -> bool:
        """Queue one text message (``data`` is UTF-8, e.g. from ``orjson.dumps``)."""
        return self._send(data.decode())

    def send_binary(self, data: bytes) -> bool:
        return self._send(data)

    def _send(self, message: str | bytes) -> bool:
        self._queue.send_nowait(message)
        self._unsent += 1
        return True

    async def wait_flushed(self) -> None:
        """Wait until every message queued so far has gone to the kernel (or was dropped)."""
        while self._unsent:
            await self._flushed.park()

    async def receive(self) -> Message:
        """The next message; :class:`Closed` once the websocket is closed (after the
        messages that came before the peer's close frame; none after our own)."""
        try:
            message = await self.connection.get_message()
        except ConnectionClosed as closed:
            raise self._closed(closed) from None
        if isinstance(message, str):
            return Message(message.encode(), is_text=True)
        return Message(message, is_text=False)

    def _closed(self, closed: ConnectionClosed) -> Closed:
        if self._ours and self._close is not None:
            return Closed(*self._close, by_peer=False)
        if closed.reason is None:
            return Closed(1006, "", by_peer=True)
        return Closed(closed.reason.code, closed.reason.reason or "", by_peer=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is queued: the closing handshake within ``CLOSE_TIMEOUT``, else
        the connection is cut. Idempotent."""
        if self._close is None:
            self._close = (code, reason)
            self._queue.close()
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._done.wait()
        self._scope.cancel()
        await self._done.wait()

    async def run(self) -> None:
        """Send what is queued, in order, until :meth:`close`; then close the websocket."""
        try:
            with self._scope:
                async with self._outbox:
                    while True:
                        try:
                            batch = [await self._outbox.receive()]
                        except trio.EndOfChannel:
                            break
                        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                            while True:
                                batch.append(self._outbox.receive_nowait())
                        await self._send_together(batch)
                        self._unsent -= len(batch)
                        self._flushed.unpark_all()
                assert self._close is not None
                code, reason = self._close
                self._ours = self.connection.closed is None
                await self.connection.aclose(code, reason or None)
        finally:
            self._unsent = 0
            self._flushed.unpark_all()
            self._done.set()

    async def _send_together(self, batch: list[str | bytes]) -> None:
        """One write for what a test sent between two awaits (dropped once the peer closed)."""
        self._stream.hold()
        try:
            for message in batch:
                await self.connection.send_message(message)
        except ConnectionClosed:
            pass
        finally:
            await self._stream.release()


class Peer:
    """One end of a websocket, read one message at a time."""

    def __init__(self, ws: Socket) -> None:
        self.ws = ws

    async def receive(self, within: float = WAIT) -> Message:
        with trio.fail_after(within):
            return await self.ws.receive()

    async def json(self, within: float = WAIT) -> dict[str, Any]:
        """The next message, which must be text JSON."""
        message = await self.receive(within)
        assert message.is_text, f"expected text, got {message!r:.80}"
        decoded = orjson.loads(message.data)
        assert isinstance(decoded, dict)
        return decoded

    async def binary(self, within: float = WAIT) -> bytes:
        message = await self.receive(within)
        assert not message.is_text, f"expected binary, got {message!r:.80}"
        return message.data

    async def closed(self, within: float = WAIT) -> tuple[Closed, list[Message]]:
        """Read until the websocket closes: the close, and every message not read before it."""
        messages: list[Message] = []
        with trio.fail_after(within):
            try:
                while True:
                    messages.append(await self.ws.receive())
            except Closed as closed:
                return closed, messages

    def send_json(self, value: dict[str, Any]) -> None:
        assert self.ws.send_text(orjson.dumps(value))

    def send_binary(self, data: bytes) -> None:
        assert self.ws.send_binary(data)


class BridgeApp:
    """The application at ``media.bridge_url``: a trio-websocket server on 127.0.0.1, port 0.

    Each connection voicecalld opens arrives as a :class:`Peer` from :meth:`next`; the upgrade
    requests are kept in :attr:`paths`. With :attr:`refusing` set, upgrades get a 503.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.port: int = listener.socket.getsockname()[1]
        self.paths: list[str] = []
        self.refusing = False
        self.peers: list[Peer] = []
        self._send, self._receive = trio.open_memory_channel[Peer](64)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/bridge"

    @classmethod
    async def serve(cls, nursery: trio.Nursery) -> BridgeApp:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        app = cls(listeners[0])
        await nursery.start(trio.serve_listeners, app._on_connection, listeners)
        return app

    def shrink_receive_buffer(self, size: int) -> None:
        """Connections accepted from now on start with a receive buffer this small."""
        self.listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    async def _on_connection(self, connection: trio.SocketStream) -> None:
        """One connection, for as long as it lives (``serve_listeners`` closes its socket)."""
        stream = HeldStream(connection)
        ws: Socket | None = None
        async with trio.open_nursery() as reader:  # trio-websocket's reader task
            with trio.move_on_after(WAIT):
                request = await wrap_server_stream(reader, stream)
                self.paths.append(request.path)
                try:
                    if self.refusing:
                        await request.reject(503, body=b"not now")
                    else:
                        ws = Socket(await request.accept(), stream)
                except ConnectionClosed:
                    pass  # voicecalld left during the upgrade
            if ws is not None:
                peer = Peer(ws)
                self.peers.append(peer)
                await self._send.send(peer)
                await ws.run()
            reader.cancel_scope.cancel()

    async def next(self, within: float = WAIT) -> Peer:
        """The next connection voicecalld opens to the app."""
        with trio.fail_after(within):
            return await self._receive.receive()

    def nothing_pending(self) -> bool:
        """Whether no connection came in that :meth:`next` has not returned."""
        return self._receive.statistics().current_buffer_used == 0


@attrs.define
class Rig:
    """The daemon (every carrier enabled, against the simulator) and its bridge app."""

    daemon: Daemon
    sim: FakeCarriers
    app: BridgeApp
    port: int
    logged: _Records
    nursery: trio.Nursery
    """Where the carriers' websockets live (closed when the rig ends)."""
    carriers: list[Peer] = attrs.Factory(list)
    raw: list[trio.SocketStream] = attrs.Factory(list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- calls and their stream tokens, from each carrier's webhook answer ---------------------

    async def mock_call(self, sid: str = "MK1") -> tuple[str, str]:
        """An inbound mock call: its call id and the stream token of the webhook answer."""
        body = orjson.dumps(
            {"event": "initiated", "call_sid": sid, "from": "+14155550100", "to": "+14155550199"}
        )
        response = await self.daemon.api.post(
            f"{self.base}/webhooks/mock",
            content=body,
            headers={"X-Mock-Signature": mock.sign(API_TOKEN, body)},
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["reply"] == "stream"
        return self.call_of("mock", sid).id, str(answer["token"])

    async def twilio_call(self, sid: str) -> tuple[str, str]:
        """An inbound Twilio call, signed as Twilio signs: the token of its TwiML answer."""
        url = f"{self.base}/webhooks/twilio"
        params = {
            "AccountSid": self.sim.accounts.twilio_account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+14155550100",
            "To": "+14155550199",
        }
        validator = RequestValidator(self.sim.accounts.twilio_auth_token)
        response = await self.daemon.api.post(
            url,
            data=params,
            headers={"X-Twilio-Signature": validator.compute_signature(url, params)},
        )
        assert response.status_code == 200, response.text
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        assert (
            stream is not None and stream.get("url") == f"ws://127.0.0.1:{self.port}/media/twilio"
        )
        parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        return self.call_of("twilio", sid).id, str(parameters["token"])

    async def plivo_call(self, uuid: str) -> tuple[str, str]:
        """An inbound Plivo call, signed V3: the token of its ``<Stream extraHeaders>``."""
        url = f"{self.base}/webhooks/plivo"
        params = {
            "CallUUID": uuid,
            "From": "14155550100",
            "To": "14155550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "Event": "StartApp",
        }
        nonce = "12345678901234567890"
        token = self.sim.accounts.plivo_auth_token
        signature = get_signature_v3(token, construct_post_url(url, params), nonce).decode()
        response = await self.daemon.api.post(
            url,
            data=params,
            headers={"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce},
        )
        assert response.status_code == 200, response.text
        stream = ET.fromstring(response.text).find("./Stream")
        assert stream is not None
        assert stream.text == f"ws://127.0.0.1:{self.port}/media/plivo"
        headers = dict(
            pair.split("=", 1)
            for pair in str(stream.get("extraHeaders")).replace(";", ",").split(",")
        )
        return self.call_of("plivo", uuid).id, headers["token"]

    async def telnyx_call(self, call_control_id: str) -> tuple[str, str]:
        """An inbound Telnyx call, signed Ed25519: voicecalld answers it through REST with the
        stream, and the token travels in the answer's ``client_state``."""
        simulated = SimCall(
            carrier="telnyx",
            carrier_id=call_control_id,
            from_number="+14155550100",
            to="+14155550199",
            direction="inbound",
        )
        simulated.set_status(SimStatus.RINGING)
        self.sim.calls[call_control_id] = simulated  # so that the answer finds it
        body = orjson.dumps(
            {
                "data": {
                    "record_type": "event",
                    "event_type": "call.initiated",
                    "id": f"evt-{call_control_id}",
                    "occurred_at": "2026-01-01T00:00:00.000000Z",
                    "payload": {
                        "call_control_id": call_control_id,
                        "call_leg_id": "428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
                        "call_session_id": "428c31b6-abf3-3bc1-b7f4-5013ef9657c1",
                        "connection_id": "1684641123236054244",
                        "direction": "incoming",
                        "from": "+14155550100",
                        "to": "+14155550199",
                        "state": "parked",
                    },
                },
                "meta": {"attempt": 1},
            }
        )
        timestamp = str(int(time.time()))
        signed = SigningKey(self.sim.accounts.telnyx_signing_seed).sign(
            timestamp.encode() + b"|" + body
        )
        headers = {
            "telnyx-signature-ed25519": base64.b64encode(signed.signature).decode(),
            "telnyx-timestamp": timestamp,
            "content-type": "application/json",
        }
        response = await self.daemon.api.post(
            f"{self.base}/webhooks/telnyx", content=body, headers=headers
        )
        assert response.status_code == 200, response.text

        def answers() -> list[RecordedRequest]:
            return [r for r in self.sim.requests if r.path.endswith("/actions/answer")]

        await wait_until(answers)
        answer = orjson.loads(answers()[-1].body)
        assert answer["stream_url"] == f"ws://127.0.0.1:{self.port}/media/telnyx"
        state = decode_client_state(answer["client_state"])
        assert state.token
        return self.call_of("telnyx", call_control_id).id, state.token

    def call_of(self, provider: str, provider_call_id: str) -> Call:
        manager = self.daemon.manager
        return next(
            call
            for call in [*manager.calls.values()]
            if call.provider == provider and call.provider_call_id == provider_call_id
        )

    # -- streams -------------------------------------------------------------------------------

    async def carrier(self, provider: str, headers: tuple[tuple[str, str], ...] = ()) -> Peer:
        """A carrier's websocket to ``/media/{provider}`` (closed when the rig ends). A refused
        upgrade raises :class:`~voicecalld.media.handshake.HandshakeError` with its status."""
        ws: Socket = await self.nursery.start(self._carrier, f"/media/{provider}", headers)
        peer = Peer(ws)
        self.carriers.append(peer)
        return peer

    async def _carrier(
        self,
        path: str,
        headers: tuple[tuple[str, str], ...],
        *,
        task_status: trio.TaskStatus[Socket] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One carrier websocket, for as long as it lives (its socket closed at the end)."""
        stream = HeldStream(await trio.open_tcp_stream("127.0.0.1", self.port))
        extra = [(name.encode(), value.encode()) for name, value in headers]
        try:
            async with trio.open_nursery() as reader:  # trio-websocket's reader task
                with trio.fail_after(WAIT):
                    connection = await wrap_client_stream(
                        reader,
                        cast(trio.SocketStream, stream),  # any trio stream will do
                        f"127.0.0.1:{self.port}",
                        path,
                        extra_headers=extra,
                    )
                ws = Socket(connection, stream)
                task_status.started(ws)
                await ws.run()
                reader.cancel_scope.cancel()
        except* ConnectionRejected as refusals:  # raised by the reader task, hence the group
            refusal = refusals.exceptions[0]
            status = refusal.status_code if isinstance(refusal, ConnectionRejected) else 0
            raise HandshakeError(status, "upgrade refused") from None
        finally:
            await stream.aclose()

    async def carrier_in_one_write(
        self, provider: str, messages: list[bytes], *, receive_buffer: int = 0
    ) -> trio.SocketStream:
        """A carrier that sends its upgrade request and ``messages`` in one write, so that the
        daemon reads them together (the rig closes the connection). With ``receive_buffer``,
        its socket's receive buffer is that small from the start. The bytes are wsproto's."""
        sock = trio.socket.socket()
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", self.port))
        stream = trio.SocketStream(sock)
        self.raw.append(stream)
        upgrade = H11Handshake(ConnectionType.CLIENT).send(
            Request(host=f"127.0.0.1:{self.port}", target=f"/media/{provider}")
        )
        frames = FrameProtocol(client=True, extensions=[])
        await stream.send_all(upgrade + b"".join(frames.send_data(m.decode()) for m in messages))
        return stream

    async def events(self, call_id: str, *, within: float = WAIT) -> list[dict[str, Any]]:
        """The call's stored events (type, data and the call's state), once a
        ``stream.stopped`` is among them: a stream's end is recorded while its websockets
        close, so it may come after the close a test saw."""
        with trio.fail_after(within):
            while True:
                stored = await self.daemon.manager.store.events_after(0, 1000)
                events = [
                    {"type": e.type.value, **e.data, "state": e.call.state.value}
                    for e in stored
                    if e.call.id == call_id
                ]
                if any(event["type"] == "stream.stopped" for event in events):
                    return events
                await trio.sleep(0.01)

    def warned(self, message: str) -> bool:
        """Whether the daemon logged ``message`` as a warning (or worse) so far."""
        return any(record.getMessage() == message for record in self.logged.records)

    def counter(self, name: str, **labels: str) -> float:
        """A counter of the daemon's ``/metrics``, read in process (``media_dropped``...)."""
        metric = getattr(self.daemon.runtime.metrics, name)
        value: float = metric.get(**labels)
        return value

    async def metrics(self) -> str:
        response = await self.daemon.api.get(f"{self.base}/metrics")
        assert response.status_code == 200
        return response.text


@asynccontextmanager
async def media_rig(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Rig]:
    """The daemon with the mock, Twilio, Plivo and Telnyx carriers and a bridge app at
    ``media.bridge_url`` (unless the ``media`` section says otherwise). Inbound calls are
    admitted; ``sections`` are merged over that configuration.

    Nothing may log an error meanwhile (the front door logs any exception that escapes a
    connection's handler as one): the rig fails the test if anything did.
    """
    logged = _Records()
    logging.getLogger("voicecalld").addHandler(logged)
    try:
        async with _media_rig(tmp_path, sections, logged) as rig:
            yield rig
    finally:
        logging.getLogger("voicecalld").removeHandler(logged)
    errors = [r.getMessage() for r in logged.records if r.levelno >= logging.ERROR]
    assert not errors, errors


class _Records(logging.Handler):
    """Warnings and errors of the ``voicecalld`` loggers, kept on the logger itself (so it
    does not matter whether another test configured them not to propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@asynccontextmanager
async def _media_rig(
    tmp_path: Path, sections: dict[str, Any], logged: _Records
) -> AsyncIterator[Rig]:
    port = free_port()
    async with serve_fake_carriers() as sim, trio.open_nursery() as nursery:
        app = await BridgeApp.serve(nursery)
        document: dict[str, dict[str, Any]] = {
            "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
            "calls": {"inbound_policy": "open", "max_concurrent": 100},
            "media": {"bridge_url": app.url},
            "runtime": {"drain_timeout": 0.0},
            "providers": {
                "twilio": attrs.asdict(sim.twilio_config()),
                "plivo": attrs.asdict(sim.plivo_config()),
                "telnyx": attrs.asdict(sim.telnyx_config()),
            },
        }
        for name, table in sections.items():
            document[name] = {**document.get(name, {}), **table}
        async with running(make_config(tmp_path, document)) as daemon:
            rig = Rig(daemon, sim, app, port, logged, nursery)
            try:
                yield rig
            finally:
                # Closed while the daemon runs (it answers close frames at once: a test peer
                # that nobody reads would make the daemon wait out its close timeout).
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as closing:
                        for peer in [*rig.carriers, *app.peers]:
                            closing.start_soon(peer.ws.close)
                    # a call's bridge outlives its stream, and the app's close ends the call:
                    # let those ends, and the carrier hang-ups they owe, be done before the
                    # daemon stops (a hang-up cut short leaves httpx's request body unclosed)
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await wait_until(lambda: _settled(daemon))
                    for stream in rig.raw:
                        await stream.aclose()
        nursery.cancel_scope.cancel()


def _settled(daemon: Daemon) -> bool:
    """No bridge is open, and no carrier hang-up is owed."""
    streams, manager = daemon.runtime.streams, daemon.manager
    return (streams is None or not streams._bridges) and manager.owed_hangups == 0


def carrier_message(carrier: str, name: str, changes: dict[str, str] | None = None) -> bytes:
    """A documented stream message of ``carrier`` (tests/carriers/samples), each ``old`` string
    of ``changes`` replaced by its ``new`` one (each must occur)."""
    message = sample(f"{carrier}/stream/{name}.json")
    for old, new in (changes or {}).items():
        assert old.encode() in message, f"{old!r} not in {message!r:.120}"
        message = message.replace(old.encode(), new.encode())
    return message
