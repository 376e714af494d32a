"""Proxies in front of the webhook route (SPEC §4), over HTTP.

- Forwarded headers count only from ``server.trusted_proxies``: behind one, the client is the
  rightmost X-Forwarded-For entry that is not itself a trusted proxy, and the in-flight limit
  (429) applies to that client; from any other peer X-Forwarded-For is ignored.
- The URL a signature is checked against is ``public_url`` + route path (+ query), even when
  ``public_url`` has a path prefix the proxy strips; never the Host header or X-Forwarded-Host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from tests.http.webhook_support import Rig, inbound, raw_request, read_status, rig_for
from voicecalld.http.asgi import client_address

PUBLIC = "https://voice.example.com/voice"
"""A public URL with a path prefix: the proxy forwards ``/voice/webhooks/...`` as
``/webhooks/...``."""


def stuck_head(forwarded_for: str | None) -> str:
    """A signed-looking webhook whose body never finishes: it holds its in-flight slot."""
    forwarded = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    return (
        "POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: AAAA\r\n"
        f"{forwarded}Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 100\r\n\r\n"
    )


def whole_request(forwarded_for: str) -> tuple[str, bytes]:
    """A complete webhook with a wrong signature: 403 at once, unless refused before (429)."""
    body = b"CallSid=CA" + b"1" * 32
    head = (
        "POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: AAAA\r\n"
        f"X-Forwarded-For: {forwarded_for}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head, body


async def status_of(rig: Rig, forwarded_for: str) -> int:
    stream = await raw_request(rig.port, *whole_request(forwarded_for))
    try:
        with trio.fail_after(0.4):  # under body_timeout (0.5 s): before any stuck one ends
            return await read_status(stream)
    finally:
        await stream.aclose()


async def hold_eight(rig: Rig, forwarded_for: Sequence[str | None]) -> list[trio.SocketStream]:
    """Eight webhooks in flight (``server.max_inflight_per_ip``), all reading their bodies."""
    assert len(forwarded_for) == 8
    stuck = [await raw_request(rig.port, stuck_head(entry), b"a=") for entry in forwarded_for]
    await trio.sleep(0.1)
    return stuck


async def test_behind_a_trusted_proxy_the_limit_is_per_forwarded_client(tmp_path: Path) -> None:
    # the peer (127.0.0.1) and an inner proxy network are trusted; 203.0.113.7 is the client
    async with rig_for(tmp_path, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]) as rig:
        # entries left of the client are whatever it claimed: they vary and must not matter;
        # trusted hops right of it (10.x, another proxy) are skipped
        stuck = await hold_eight(
            rig,
            [f"198.51.100.{n}, 203.0.113.7" for n in range(4)]
            + [f"198.51.100.{n}, 203.0.113.7, 10.0.0.{n}" for n in range(4)],
        )
        try:
            assert await status_of(rig, "192.0.2.99, 203.0.113.7, 10.9.9.9") == 429
            # another client behind the same proxy is not limited by the first one's requests
            assert await status_of(rig, "203.0.113.8") == 403
        finally:
            for stream in stuck:
                await stream.aclose()


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]], ids=["none", "other-network"])
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    tmp_path: Path, trusted: list[str]
) -> None:
    async with rig_for(tmp_path, trusted_proxies=trusted) as rig:
        # eight different claimed clients, all from 127.0.0.1, which is not a trusted proxy
        stuck = await hold_eight(rig, [f"203.0.113.{n}" for n in range(8)])
        try:
            assert await status_of(rig, "198.51.100.1") == 429, "the peer is the client"
        finally:
            for stream in stuck:
                await stream.aclose()


async def test_behind_a_trusted_proxy_without_forwarded_for_the_peer_is_the_client(
    tmp_path: Path,
) -> None:
    async with rig_for(tmp_path, trusted_proxies=["127.0.0.0/8"]) as rig:
        stuck = await hold_eight(rig, [None] * 8)
        try:
            assert await status_of(rig, "127.0.0.2") == 429, "every entry trusted: the peer"
            assert await status_of(rig, "203.0.113.7") == 403
        finally:
            for stream in stuck:
                await stream.aclose()


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("10.0.0.1", [b"203.0.113.7"], "203.0.113.7"),
        ("10.0.0.1", [b"198.51.100.1, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),
        ("10.0.0.1", [b"198.51.100.1", b"203.0.113.7 , 10.0.0.2"], "203.0.113.7"),  # two lines
        ("10.0.0.1", [b"10.0.0.3, 10.0.0.2"], "10.0.0.1"),
        ("10.0.0.1", [], "10.0.0.1"),
        ("192.0.2.1", [b"203.0.113.7"], "192.0.2.1"),
        ("fd00::1", [b"2001:db8::7, fd00::2"], "2001:db8::7"),
    ],
)
def test_client_address(peer: str, headers: list[bytes], expected: str) -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    scope = {"client": (peer, 5060), "headers": [(b"x-forwarded-for", h) for h in headers]}
    assert client_address(scope, trusted) == expected
    assert client_address(scope, []) == peer, "nothing trusted: always the peer"


# -- the URL a signature covers ---------------------------------------------------------------


async def test_a_public_url_with_a_path_prefix_is_the_url_verified(tmp_path: Path) -> None:
    # trusted, so a forwarded header that counted anywhere would count here
    async with rig_for(tmp_path, public_url=PUBLIC, trusted_proxies=["127.0.0.1"]) as rig:
        forwarded = {
            "Host": "voice.example.com",
            "X-Forwarded-Host": "voice.example.com",
            "X-Forwarded-Proto": "https",
        }
        # the URL as the Host header gives it, and as the forwarded headers would rebuild it
        # (no prefix: the proxy stripped it); neither is what the carrier signed
        for signed_url in (
            f"{rig.base}/webhooks/twilio",
            "https://voice.example.com/webhooks/twilio",
        ):
            response = await rig.twilio(inbound(), signed_url=signed_url, headers=forwarded)
            assert response.status_code == 403, signed_url
        plivo_unprefixed = await rig.plivo(
            plivo_fields(), signed_url="https://voice.example.com/webhooks/plivo"
        )
        assert plivo_unprefixed.status_code == 403
        assert rig.daemon.manager.calls == {}

        response = await rig.twilio(inbound(), signed_url=f"{PUBLIC}/webhooks/twilio")
        assert response.status_code == 200, response.text
        # the stream URL handed to the carrier carries the prefix too
        assert '<Stream url="wss://voice.example.com/voice/media/twilio">' in response.text
        # the request's query is part of the signed URL
        status = inbound(CallStatus="completed", CallbackSource="call-progress-events")
        query = "call=c_0123456789abcdef01234567"
        response = await rig.twilio(
            status, query=query, signed_url=f"{PUBLIC}/webhooks/twilio?{query}"
        )
        assert response.status_code == 200, response.text
        plivo = await rig.plivo(plivo_fields(), signed_url=f"{PUBLIC}/webhooks/plivo")
        assert plivo.status_code == 200, plivo.text


def plivo_fields() -> dict[str, str]:
    return {
        "CallUUID": "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a",
        "From": "14155550100",
        "To": "14155550199",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "Event": "StartApp",
    }
