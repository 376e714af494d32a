"""Admission to ``/media/{provider}``: routes, stream and pending limits, message size.

Every limit is checked at the upgrade, before any websocket exists (a refusal is a plain HTTP
answer), and counted from the moment a stream is admitted, so no burst of upgrades can
overshoot it.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.media.support import Rig, carrier_message, media_rig
from tests.support import wait_until
from voicecalld.media.connection import connect
from voicecalld.media.handshake import HandshakeError
from voicecalld.media.streams import MAX_CARRIER_MESSAGE
from voicecalld.media.websocket import CloseCode

SID = "CA11111111111111111111111111111111"


async def refused(rig: Rig, path: str = "/media/mock", **headers: str) -> int:
    """The status an upgrade to ``path`` is refused with (the test fails if it is accepted)."""
    try:
        ws = await connect(f"ws://127.0.0.1:{rig.port}{path}", headers=list(headers.items()))
    except HandshakeError as refusal:
        return refusal.status
    await ws.close()
    raise AssertionError(f"the upgrade to {path} was accepted")


def open_streams(rig: Rig) -> float:
    return rig.daemon.runtime.metrics.streams.collect()[()]


async def raw_status(rig: Rig, request: bytes) -> bytes:
    """The status line the daemon answers ``request`` with."""
    async with await trio.open_tcp_stream("127.0.0.1", rig.port) as stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(5):
            while b"\r\n" not in answer:
                answer += await stream.receive_some(4096)
    return answer.split(b"\r\n")[0]


async def test_only_enabled_carriers_have_a_media_route(tmp_path: Path) -> None:
    async with media_rig(tmp_path, providers={"plivo": {"enabled": False}}) as rig:
        for path in ("/media/plivo", "/media/nope", "/media/", "/media/mock/extra"):
            assert await refused(rig, path) == 404, path
        assert rig.counter("streams_refused", reason="404") == 4


async def test_a_request_that_is_not_an_upgrade_is_refused(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        plain = b"GET /media/mock HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        assert await raw_status(rig, plain) == b"HTTP/1.1 400 Bad Request"
        head = b"GET /media/mock HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 20_000
        assert await raw_status(rig, head) == b"HTTP/1.1 431 Request Header Fields Too Large"


async def test_max_streams(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"max_streams": 2}) as rig:
        first = await rig.carrier("mock")
        await rig.carrier("mock")
        assert await refused(rig) == 503
        assert rig.counter("streams_refused", reason="503") == 1
        await first.ws.close()
        await wait_until(lambda: open_streams(rig) == 1)
        await rig.carrier("mock")  # the place is free again


async def test_max_pending_counts_streams_not_yet_started(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"max_pending": 1}) as rig:
        _, token = await rig.mock_call(SID)
        pending = await rig.carrier("mock")
        assert await refused(rig) == 503
        pending.ws.send_text(carrier_message("twilio", "start", {"t0k3n": token}))
        await rig.app.next()  # started: no longer pending
        await rig.carrier("mock")
        assert await refused(rig) == 503


async def test_max_pending_per_ip(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"max_pending_per_ip": 1}) as rig:
        await rig.carrier("mock")
        assert await refused(rig) == 429
        # X-Forwarded-For counts only from a trusted proxy
        assert await refused(rig, **{"X-Forwarded-For": "203.0.113.7"}) == 429
        assert rig.counter("streams_refused", reason="429") == 2


async def test_max_pending_per_ip_behind_a_trusted_proxy(tmp_path: Path) -> None:
    async with media_rig(
        tmp_path, server={"trusted_proxies": ["127.0.0.1"]}, media={"max_pending_per_ip": 1}
    ) as rig:
        await rig.carrier("mock", headers=(("X-Forwarded-For", "203.0.113.7"),))
        assert await refused(rig, **{"X-Forwarded-For": "203.0.113.7"}) == 429
        # the client is the rightmost hop that is not a trusted proxy
        await rig.carrier("mock", headers=(("X-Forwarded-For", "203.0.113.7, 203.0.113.9"),))
        await rig.carrier("mock", headers=(("X-Forwarded-For", "203.0.113.8, 127.0.0.1"),))
        assert await refused(rig, **{"X-Forwarded-For": "198.51.100.1, 203.0.113.8"}) == 429
        await rig.carrier("mock")  # the proxy's own, without the header


async def test_a_burst_of_upgrades_cannot_overshoot_a_limit(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"max_streams": 3, "max_pending_per_ip": 100}) as rig:
        outcomes: list[int] = []

        async def upgrade() -> None:
            try:
                await rig.carrier("mock")
                outcomes.append(101)
            except HandshakeError as refusal:
                outcomes.append(refusal.status)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(upgrade)
        assert sorted(outcomes) == [101] * 3 + [503] * 7


async def test_a_carrier_message_over_the_limit_closes_the_stream_1009(tmp_path: Path) -> None:
    async with media_rig(tmp_path) as rig:
        carrier = await rig.carrier("mock")
        carrier.ws.send_text(b'{"event":"connected","x":"' + b"x" * MAX_CARRIER_MESSAGE + b'"}')
        closed, _ = await carrier.closed()
        assert closed.code == CloseCode.MESSAGE_TOO_BIG
        assert len(carrier_message("twilio", "start")) * 8 <= MAX_CARRIER_MESSAGE


async def test_a_carrier_that_leaves_before_starting_frees_its_place(tmp_path: Path) -> None:
    async with media_rig(tmp_path, media={"max_pending": 1}) as rig:
        carrier = await rig.carrier("mock")
        await carrier.ws.close()
        await wait_until(lambda: open_streams(rig) == 0)
        await rig.carrier("mock")
        assert rig.counter("streams_refused", reason="503") == 0
