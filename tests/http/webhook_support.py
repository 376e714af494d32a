"""A daemon with all three carriers enabled, and webhooks signed the way each carrier signs them.

Signatures come from the carriers' own SDKs (twilio's ``RequestValidator``, plivo's V3 signer)
and PyNaCl for Telnyx, never from voicecalld's code, so a webhook test cannot pass by sharing a
bug with the verifier it tests.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from nacl.signing import SigningKey
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3
from twilio.request_validator import RequestValidator

from voicecalld.sim.rest import FakeCarriers, serve_fake_carriers
from voicecalld.testing import Daemon, free_port, make_config, running

SID = "CA" + "1" * 32
_NONCES = itertools.count(10**19)
"""Plivo nonces: a fresh one per request, so two requests are never one replay."""


@attrs.define
class Rig:
    daemon: Daemon
    sim: FakeCarriers
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def twilio_signature(self, url: str, params: Mapping[str, str]) -> str:
        token = self.sim.accounts.twilio_auth_token
        return str(RequestValidator(token).compute_signature(url, dict(params)))

    async def twilio(
        self,
        params: Mapping[str, str],
        query: str = "",
        signed_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``params`` to the Twilio webhook, signed over ``signed_url`` (default: the URL
        posted to)."""
        url = f"{self.base}/webhooks/twilio" + (f"?{query}" if query else "")
        signature = self.twilio_signature(signed_url or url, params)
        return await self.daemon.api.post(
            url, data=dict(params), headers={**(headers or {}), "X-Twilio-Signature": signature}
        )

    async def plivo(
        self, params: Mapping[str, str], query: str = "", signed_url: str | None = None
    ) -> httpx.Response:
        """POST ``params`` to the Plivo webhook, signed V3 over ``signed_url`` with a fresh
        nonce (decoded before signing, as the SDK's own ``validate_v3_signature`` does)."""
        url = f"{self.base}/webhooks/plivo" + (f"?{query}" if query else "")
        nonce = str(next(_NONCES))
        canonical = construct_post_url(signed_url or url, dict(params)).decode("utf-8")
        token = self.sim.accounts.plivo_auth_token
        signature = get_signature_v3(token, canonical, nonce).decode("ascii")
        return await self.daemon.api.post(
            url,
            data=dict(params),
            headers={"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce},
        )

    def telnyx_headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Telnyx's headers for ``body``: Ed25519 (PyNaCl) over ``timestamp|body``."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        key = SigningKey(self.sim.accounts.telnyx_signing_seed)
        signed = key.sign(stamp.encode() + b"|" + body)
        return {
            "telnyx-signature-ed25519": base64.b64encode(signed.signature).decode(),
            "telnyx-timestamp": stamp,
            "content-type": "application/json",
        }

    async def telnyx(self, body: bytes, timestamp: int | None = None) -> httpx.Response:
        return await self.daemon.api.post(
            f"{self.base}/webhooks/telnyx",
            content=body,
            headers=self.telnyx_headers(body, timestamp),
        )


@asynccontextmanager
async def rig_for(tmp_path: Path, **server: Any) -> AsyncIterator[Rig]:
    """A running daemon with Twilio, Plivo and Telnyx enabled against a fake carrier;
    ``server`` overrides ``[server]`` settings (``public_url`` defaults to the daemon's own)."""
    port = free_port()
    async with serve_fake_carriers() as sim:
        config = make_config(
            tmp_path,
            server={
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "body_timeout": 0.5,
                **server,
            },
            calls={"inbound_policy": "open"},
            providers={
                "twilio": attrs.asdict(sim.twilio_config()),
                "plivo": attrs.asdict(sim.plivo_config()),
                "telnyx": attrs.asdict(sim.telnyx_config()),
            },
        )
        async with running(config) as daemon:
            yield Rig(daemon, sim, port)


def inbound(**extra: str) -> dict[str, str]:
    """A Twilio inbound-call webhook's fields (carriers.md §1.2)."""
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": SID,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+14155550100",
        "To": "+14155550199",
        **extra,
    }


async def raw_request(port: int, head: str, body: bytes = b"") -> trio.SocketStream:
    """Send ``head`` and ``body`` as they are, for requests httpx would not send (slow, cut)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(head.encode() + body)
    return stream


async def read_status(stream: trio.SocketStream) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])
