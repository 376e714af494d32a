"""HTTPS and WSS served directly (``server.tls_cert`` / ``tls_key``)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from voicecalld.media.connection import ConnectionClosed, WebSocket, connect
from voicecalld.testing import make_config, running


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


async def test_https_and_wss_on_one_port(tmp_path: Path, authority: trustme.CA) -> None:
    server = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    config = make_config(
        tmp_path / "state",
        server={"tls_cert": str(cert), "tls_key": str(key)},
        media={"start_timeout": 0.2},
    )
    async with running(config) as daemon:
        https = f"https://127.0.0.1:{daemon.port}"
        async with httpx.AsyncClient(verify=client_context) as client:
            assert (await client.get(f"{https}/readyz")).status_code == 200
            api = await client.get(
                f"{https}/v1/calls", headers={"Authorization": "Bearer test-token"}
            )
            assert api.status_code == 200
        ws = await connect(f"wss://127.0.0.1:{daemon.port}/media/mock", ssl_context=client_context)
        with pytest.raises(ConnectionClosed) as closed:  # no start message in time: 1008
            await drain(ws)
        assert closed.value.code == 1008


async def drain(ws: WebSocket) -> None:
    while True:
        await ws.receive_batch()
