"""The upgrade handshake, checked against wsproto's h11-based handshake as the other side."""

from __future__ import annotations

import base64

import h11
import orjson
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

from voicecalld.media.handshake import (
    MAX_HEAD_SIZE,
    HandshakeError,
    accept_key,
    accept_response,
    check_response,
    client_request,
    error_response,
    head_length,
    new_key,
    parse_request,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request_head(*lines: str, first: str = "GET /media/twilio?token=a%2Fb HTTP/1.1") -> bytes:
    return ("\r\n".join([first, *lines]) + "\r\n\r\n").encode("latin-1")


GOOD = (
    "Host: voice.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
)


def test_the_rfc_example_key() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def test_a_good_request_is_read_raw() -> None:
    request = parse_request(request_head(*GOOD, "X-Twilio-Signature: abc", "x-twilio-signature: d"))
    assert request.target == "/media/twilio?token=a%2Fb"
    assert (request.path, request.query) == ("/media/twilio", "token=a%2Fb")
    assert request.key == KEY
    assert request.header("HOST") == "voice.example.com"
    assert request.header("X-Twilio-Signature") == "abc, d"
    assert request.header("absent") is None
    assert ("upgrade", "websocket") in request.headers


def test_list_headers_match_by_token_in_any_case() -> None:
    lines = [*GOOD[:1], "Upgrade: WebSocket", "Connection: keep-alive, UPGRADE", *GOOD[3:]]
    assert parse_request(request_head(*lines)).key == KEY


def test_wsproto_client_and_our_server_agree() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    head = client.send(Request(host="example.com", target="/media/mock?t=1"))
    assert head_length(head) == len(head)
    request = parse_request(head)
    assert request.path == "/media/mock"
    client.receive_data(accept_response(request))
    assert isinstance(next(client.events()), AcceptConnection)


def test_our_client_and_wsproto_server_agree() -> None:
    key = new_key()
    assert len(base64.b64decode(key)) == 16
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client_request("example.com:8080", "/bridge?x=1", key, [("X-Call", "c1")]))
    event = next(server.events())
    assert isinstance(event, Request)
    assert (event.host, event.target) == ("example.com:8080", "/bridge?x=1")
    assert (b"x-call", b"c1") in event.extra_headers
    answer = server.send(AcceptConnection())
    headers = check_response(answer, key)
    assert ("sec-websocket-accept", accept_key(key)) in headers


def test_a_refusal_reaches_the_client_with_its_status() -> None:
    server = WSConnection(ConnectionType.SERVER)
    key = new_key()
    server.receive_data(client_request("example.com", "/", key))
    next(server.events())
    answer = server.send(RejectConnection(status_code=403, has_body=False))
    with pytest.raises(HandshakeError) as refused:
        check_response(answer, key)
    assert refused.value.status == 403


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b"garbage\r\n\r\n", 0),
        (b"HTTP/1.1 1O1 Switching\r\n\r\n", 0),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 101),
        (
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: wrong=\r\n\r\n",
            101,
        ),
        (
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            101,
        ),
        (b"HTTP/1.1 101 OK\r\nBad Header\r\n\r\n", 0),
    ],
)
def test_bad_server_answers_are_refused(answer: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as refused:
        check_response(answer, KEY)
    assert refused.value.status == status


def without(name: str) -> tuple[str, ...]:
    return tuple(line for line in GOOD if not line.startswith(name))


MALFORMED = {
    "POST": (request_head(*GOOD, first="POST /media/twilio HTTP/1.1"), 405),
    "HTTP/1.0": (request_head(*GOOD, first="GET / HTTP/1.0"), 400),
    "absolute target": (request_head(*GOOD, first="GET http://x/ HTTP/1.1"), 400),
    "request line with 2 parts": (request_head(*GOOD, first="GET /"), 400),
    "request line with extra spaces": (request_head(*GOOD, first="GET  / HTTP/1.1"), 400),
    "control char in request line": (request_head(*GOOD, first="GET /\x01 HTTP/1.1"), 400),
    "no Host": (request_head(*without("Host")), 400),
    "two Hosts": (request_head(*GOOD, "Host: other"), 400),
    "no Upgrade": (request_head(*without("Upgrade")), 400),
    "Upgrade: h2c": (request_head(*without("Upgrade"), "Upgrade: h2c"), 400),
    "no Connection": (request_head(*without("Connection")), 400),
    "Connection: keep-alive": (request_head(*without("Connection"), "Connection: close"), 400),
    "no version": (request_head(*without("Sec-WebSocket-Version")), 426),
    "version 8": (request_head(*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version: 8"), 426),
    "no key": (request_head(*without("Sec-WebSocket-Key")), 400),
    "key not base64": (request_head(*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: !!"), 400),
    "key of 15 bytes": (
        request_head(*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"),
        400,
    ),
    "two keys": (request_head(*GOOD, f"Sec-WebSocket-Key: {KEY}"), 400),
    "folded header": (request_head(*GOOD, " continued"), 400),
    "no colon": (request_head(*GOOD, "NoColon"), 400),
    "space before colon": (request_head(*GOOD, "X-A : b"), 400),
    "empty name": (request_head(*GOOD, ": b"), 400),
    "NUL in value": (request_head(*GOOD, "X-A: b\x00c"), 400),
    "bare LF in value": (request_head(*GOOD, "X-A: b\nX-B: c"), 400),
    "no blank line": (request_head(*GOOD)[:-2], 400),
    "too many headers": (request_head(*GOOD, *(f"X-{i}: v" for i in range(64))), 431),
    "too large": (request_head(*GOOD, "X-Big: " + "v" * MAX_HEAD_SIZE), 431),
}


@pytest.mark.parametrize(
    ("head", "status"), [pytest.param(h, s, id=name) for name, (h, s) in MALFORMED.items()]
)
def test_malformed_requests_are_refused_with_the_right_status(head: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as refused:
        parse_request(head)
    assert refused.value.status == status


def test_refusals_carry_the_headers_their_answer_needs() -> None:
    with pytest.raises(HandshakeError) as refused:
        parse_request(request_head(*without("Sec-WebSocket-Version")))
    assert refused.value.headers == (("Sec-WebSocket-Version", "13"),)
    with pytest.raises(HandshakeError) as refused:
        parse_request(request_head(*GOOD, first="PUT / HTTP/1.1"))
    assert refused.value.headers == (("Allow", "GET"),)


def test_head_length_waits_for_the_blank_line_within_the_limit() -> None:
    head = request_head(*GOOD)
    assert head_length(head[:-1]) is None
    assert head_length(head + b"\x81\x00") == len(head)
    assert head_length(b"x" * 99, limit=100) is None
    with pytest.raises(HandshakeError) as refused:
        head_length(b"x" * 100, limit=100)
    assert refused.value.status == 431


@pytest.mark.parametrize(
    ("status", "headers"), [(400, ()), (403, ()), (404, ()), (503, ()), (426, (("A", "b"),))]
)
def test_error_responses_are_valid_http(status: int, headers: tuple[tuple[str, str], ...]) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(error_response(status, "no such stream", headers))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    assert (b"connection", b"close") in response.headers
    assert all(
        (name.lower().encode(), value.encode()) in response.headers for name, value in headers
    )
    assert (b"content-type", b"application/json") in response.headers
    body = client.next_event()
    assert isinstance(body, h11.Data)
    code = {400: "bad_request", 403: "forbidden", 404: "not_found", 503: "service_unavailable"}
    assert orjson.loads(body.data) == {
        "error": {"code": code.get(status, "upgrade_required"), "message": "no such stream"}
    }


def test_client_request_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        client_request("example.com", "/", KEY, [("X-A", "b\r\nX-B: c")])
