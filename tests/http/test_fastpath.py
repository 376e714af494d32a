"""The webhook fast path: its strict head parser, its responses read by h11 (an independent
HTTP/1.1 implementation), and what a carrier's connection sees through the daemon:
keep-alive, pipelining, the hand-over to hypercorn, closing, timeouts and draining.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import attrs
import h11
import pytest
import trio
import trio.testing

from tests.http.webhook_support import SID, Rig, inbound, rig_for
from voicecalld.http.asgi import Receive, Scope, Send
from voicecalld.http.fastpath import MAX_HEAD, Head, WebhookFastPath, parse_head, response_head

PLAIN = b"POST /webhooks/twilio?call=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 12\r\n\r\n"


# -- the head parser (pure) -------------------------------------------------------------------


def test_a_plain_webhook_head_is_served_here() -> None:
    head = parse_head(
        b"POST /webhooks/twilio?call=c_1 HTTP/1.1\r\nHost: a.example\r\n"
        b"X-Twilio-Signature:  abc= \r\nContent-Length: 12\r\n\r\n"
    )
    assert head == Head(
        target=b"/webhooks/twilio?call=c_1",
        headers=[
            (b"host", b"a.example"),
            (b"x-twilio-signature", b"abc="),
            (b"content-length", b"12"),
        ],
        content_length=12,
        close=False,
    )


def test_connection_close_is_noted() -> None:
    head = parse_head(PLAIN.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive, Close\r\n\r\n"))
    assert head is not None and head.close


@pytest.mark.parametrize(
    ("why", "head"),
    [
        ("another method", PLAIN.replace(b"POST", b"PUT")),
        ("another path", PLAIN.replace(b"/webhooks/twilio", b"/v1/calls")),
        ("HTTP/1.0", PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0")),
        ("no Host", PLAIN.replace(b"Host: a.example\r\n", b"")),
        ("two Hosts", PLAIN.replace(b"\r\n\r\n", b"\r\nHost: b.example\r\n\r\n")),
        ("no Content-Length", PLAIN.replace(b"Content-Length: 12\r\n", b"")),
        ("two Content-Lengths", PLAIN.replace(b"\r\n\r\n", b"\r\nContent-Length: 12\r\n\r\n")),
        ("a signed length", PLAIN.replace(b"Length: 12", b"Length: +12")),
        ("chunked", PLAIN.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")),
        ("Expect", PLAIN.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")),
        ("Upgrade", PLAIN.replace(b"\r\n\r\n", b"\r\nUpgrade: h2c\r\n\r\n")),
        ("Connection: upgrade", PLAIN.replace(b"\r\n\r\n", b"\r\nConnection: Upgrade\r\n\r\n")),
        ("a folded line", PLAIN.replace(b"\r\n\r\n", b"\r\n  folded\r\n\r\n")),
        ("a space before the colon", PLAIN.replace(b"Host:", b"Host :")),
        ("a bare LF", PLAIN.replace(b"Host: a.example\r\n", b"Host: a.example\nX: y\r\n")),
        ("a control byte", PLAIN.replace(b"a.example", b"a.exa\x00mple")),
        ("a non-ASCII target", PLAIN.replace(b"twilio", b"tw\xc3\xadlio")),
        ("no blank line", PLAIN[:-2]),
        ("too big", PLAIN.replace(b"\r\n\r\n", b"\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n")),
    ],
)
def test_anything_else_goes_to_hypercorn(why: str, head: bytes) -> None:
    assert parse_head(head) is None, why


def test_responses_are_http_1_1_as_h11_reads_them() -> None:
    body = b"<Response/>"
    headers = [(b"content-type", b"text/xml"), (b"content-length", b"11")]
    wire = response_head(200, headers, b"Fri, 27 Nov 2026 10:00:00 GMT") + body
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/webhooks/twilio", headers=[("Host", "x")]))
    client.receive_data(wire)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert (response.status_code, response.reason) == (200, b"OK")
    assert dict(response.headers)[b"date"] == b"Fri, 27 Nov 2026 10:00:00 GMT"
    data = client.next_event()
    assert isinstance(data, h11.Data) and data.data == body
    assert isinstance(client.next_event(), h11.EndOfMessage)


# -- through the daemon -----------------------------------------------------------------------


class Carrier:
    """A carrier's keep-alive connection, its responses read with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next response whole; the connection is then ready for the next request."""
        if self.h11.our_state is h11.IDLE:  # h11 reads a response to a request it sent
            self.h11.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
            self.h11.send(h11.EndOfMessage())
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed(self) -> bool:
        """Whether the daemon closed the connection (nothing more comes)."""
        with trio.fail_after(10):
            return await self.stream.receive_some(65536) == b""


def twilio_request(rig: Rig, params: dict[str, str], *, extra: str = "") -> bytes:
    url = f"{rig.base}/webhooks/twilio"
    body = urlencode(params).encode()
    return (
        f"POST /webhooks/twilio HTTP/1.1\r\nHost: 127.0.0.1:{rig.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"X-Twilio-Signature: {rig.twilio_signature(url, params)}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@asynccontextmanager
async def connected(rig: Rig) -> AsyncIterator[Carrier]:
    async with await trio.open_tcp_stream("127.0.0.1", rig.port) as stream:
        yield Carrier(stream)


async def test_one_connection_carries_a_calls_webhooks_one_after_another(
    tmp_path: Path,
) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        answers = []
        for status in ("ringing", "in-progress", "completed"):
            await carrier.send(twilio_request(rig, inbound(CallStatus=status)))
            response, _ = await carrier.response()
            answers.append((response.status_code, dict(response.headers).get(b"connection")))
        assert answers == [(200, None)] * 3
        calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
        assert [(c["provider_call_id"], c["end_reason"]) for c in calls] == [(SID, "completed")]


async def test_pipelined_webhooks_are_answered_in_order(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        requests = [twilio_request(rig, inbound(CallStatus=s)) for s in ("ringing", "completed")]
        await carrier.send(b"".join(requests))
        statuses = []
        for _ in requests:
            response, body = await carrier.response()
            statuses.append((response.status_code, body.startswith(b"<?xml")))
        assert statuses == [(200, True), (200, True)]
        calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
        assert [c["end_reason"] for c in calls] == ["completed"]


async def test_the_first_request_that_is_not_a_plain_webhook_goes_to_hypercorn(
    tmp_path: Path,
) -> None:
    """The connection goes on with hypercorn, from that request: a health check, then a chunked
    webhook (which the fast path never reads), both answered as they always are."""
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(twilio_request(rig, inbound()))
        assert (await carrier.response())[0].status_code == 200
        await carrier.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = await carrier.response()
        assert (response.status_code, body) == (200, b'{"status":"ok","service":"voicecalld"}')

        params = inbound(CallStatus="completed")
        plain = twilio_request(rig, params)
        head, _, form = plain.partition(b"\r\n\r\n")
        head = head.replace(f"Content-Length: {len(form)}".encode(), b"Transfer-Encoding: chunked")
        await carrier.send(head + b"\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(form), form))
        assert (await carrier.response())[0].status_code == 200
        calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
        assert [c["end_reason"] for c in calls] == ["completed"]


async def test_a_malformed_head_gets_hypercorns_400(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(b"POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
        assert (await carrier.response())[0].status_code == 400


async def test_a_head_with_bare_line_feeds_is_answered_by_hypercorn(tmp_path: Path) -> None:
    """The fast path waited for a CRLF blank line that never came and closed the connection
    silently after ``body_timeout``; hypercorn (h11) reads such a head, and answers."""
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(twilio_request(rig, inbound()).replace(b"\r\n", b"\n"))
        with trio.fail_after(5):
            response, _ = await carrier.response()
        assert response.status_code in (200, 400)


async def test_a_request_refused_before_its_body_is_read_closes_the_connection(
    tmp_path: Path,
) -> None:
    """Unsigned: 401 from the headers alone; the unread body must not be read as a request."""
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        body = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # a request, smuggled as a body
        await carrier.send(
            b"POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        response, _ = await carrier.response()
        assert response.status_code == 401
        assert dict(response.headers)[b"connection"] == b"close"
        assert await carrier.closed()


async def test_connection_close_from_the_carrier_is_honoured(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(twilio_request(rig, inbound(), extra="Connection: close\r\n"))
        response, _ = await carrier.response()
        assert response.status_code == 200
        assert dict(response.headers)[b"connection"] == b"close"
        assert await carrier.closed()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(twilio_request(rig, inbound()))
        await carrier.response()
        answered = trio.current_time()
        assert await carrier.closed()
        assert 4.9 < trio.current_time() - answered < 5.5


async def test_a_head_that_never_ends_is_dropped_after_the_body_timeout(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:  # server.body_timeout = 0.5
        await carrier.send(b"POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\n")
        started = trio.current_time()
        assert await carrier.closed()
        assert trio.current_time() - started < 1.5


async def test_a_graceful_stop_closes_idle_connections_at_once(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        await carrier.send(twilio_request(rig, inbound()))
        await carrier.response()
        stopping = trio.current_time()
        rig.daemon.stop()
        assert await carrier.closed()
        assert trio.current_time() - stopping < 1.0


# -- the loop on its own, with a stand-in app and hypercorn -----------------------------------


async def test_the_loop_gives_the_app_asgi_scopes_and_hands_the_rest_on() -> None:
    scopes: list[dict[str, object]] = []
    handed: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append({**scope, "body": (await receive())["body"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def hypercorn(stream: trio.abc.Stream, received: bytes) -> None:
        handed.append(received)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")

    ours, theirs = trio.socket.socketpair()
    fast = WebhookFastPath(app, keep_alive_timeout=5.0, head_timeout=1.0)
    first = PLAIN.replace(b"/twilio?call=1", b"/tw%69lio?call=1") + b"CallSid=CA12"
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with ours, theirs:
        await theirs.send(first + second)
        with trio.fail_after(5):
            await fast.serve(ours, "192.0.2.7", hypercorn)
            replies = b""
            while not replies.endswith(b"204 No Content\r\n\r\n"):
                replies += await theirs.recv(65536)
    assert scopes == [
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/twilio",
            "raw_path": b"/webhooks/tw%69lio",
            "query_string": b"call=1",
            "headers": [(b"host", b"a.example"), (b"content-length", b"12")],
            "client": ("192.0.2.7", 0),
            "body": b"CallSid=CA12",
        }
    ]
    assert handed == [second]
    assert replies.startswith(b"HTTP/1.1 200 OK\r\ndate: ")
    assert b"\r\n\r\nokHTTP/1.1 204" in replies


async def test_a_webhook_whose_first_bytes_trickle_in_is_still_served(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The front door peeks until the request line tells; a slow start is not a wrong turn."""
    async with rig_for(tmp_path) as rig, connected(rig) as carrier:
        request = twilio_request(rig, inbound())
        for byte in request[:20]:
            await carrier.send(bytes([byte]))
            await trio.sleep(0.01)
        await carrier.send(request[20:])
        response, body = await carrier.response()
        assert response.status_code == 200 and b"<Stream" in body


async def test_a_reload_applies_a_new_body_timeout_to_request_heads(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig_for(tmp_path) as rig:
        config = rig.daemon.runtime.config
        server = attrs.evolve(config.server, body_timeout=3.0)
        assert await rig.daemon.reload(attrs.evolve(config, server=server))
        async with connected(rig) as carrier:
            await carrier.send(b"POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\n")
            started = trio.current_time()
            assert await carrier.closed()
            assert 2.9 < trio.current_time() - started < 3.5


async def test_a_client_reset_mid_body_is_a_disconnect_to_the_app() -> None:
    """As through hypercorn: the route then refuses the partial body (403), never a 500."""
    entered, go = trio.Event(), trio.Event()
    received: list[dict[str, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await go.wait()
        received.append(await receive())
        await send({"type": "http.response.start", "status": 403, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def hypercorn(stream: trio.abc.Stream, received: bytes) -> None:
        raise AssertionError("not handed on")

    fast = WebhookFastPath(app, keep_alive_timeout=5.0, head_timeout=1.0)
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
        with server, client:
            await client.send(PLAIN + b"CallSid")  # 7 of the 12 bytes of body

            async def serving() -> None:
                with pytest.raises((BrokenPipeError, ConnectionResetError)):
                    await fast.serve(server, "127.0.0.1", hypercorn)  # the answer can't go

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serving)
                await entered.wait()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset, while the app has not read the body yet
                go.set()
    assert received == [{"type": "http.disconnect"}]
