"""SIGHUP and TLS (SPEC §3): a renewed certificate is served after a reload; one that cannot be
loaded is refused by its dotted key and the old one stays in service."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from voicecalld import statedir
from voicecalld.config import Config
from voicecalld.testing import make_config, running


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


def install(leaf: trustme.LeafCert, cert: Path, key: Path) -> bytes:
    """Write ``leaf``'s chain and key where the config points; returns its certificate (DER)."""
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def served_certificate(port: int, authority: trustme.CA) -> bytes:
    """The certificate a new TLS connection to the daemon is shown."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=context, https_compatible=True
    )
    try:
        await stream.do_handshake()
        der: bytes | None = stream.getpeercert(binary_form=True)
    finally:
        await stream.aclose()
    assert der is not None
    return der


def tls_config(tmp_path: Path, cert: Path, key: Path) -> Config:
    return make_config(tmp_path / "state", server={"tls_cert": str(cert), "tls_key": str(key)})


async def test_a_reload_serves_a_renewed_certificate(tmp_path: Path, authority: trustme.CA) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = install(authority.issue_cert("127.0.0.1"), cert, key)
    config = tls_config(tmp_path, cert, key)
    async with running(config) as daemon:
        assert await served_certificate(daemon.port, authority) == first
        renewed = install(authority.issue_cert("127.0.0.1"), cert, key)  # same paths
        assert await daemon.reload(config)
        assert await served_certificate(daemon.port, authority) == renewed


async def test_a_renewed_key_that_does_not_fit_is_refused_and_the_old_pair_kept(
    tmp_path: Path, authority: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = install(authority.issue_cert("127.0.0.1"), cert, key)
    config = tls_config(tmp_path, cert, key)
    async with running(config) as daemon:
        authority.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))  # half renewed
        with caplog.at_level(logging.ERROR, logger="voicecalld.supervisor"):
            assert not await daemon.reload(config)
        logged = [getattr(record, "error", "") for record in caplog.records]
        assert any(line.startswith("server.tls_key: ") for line in logged), logged
        assert await served_certificate(daemon.port, authority) == first


async def test_a_reload_can_turn_tls_on(tmp_path: Path, authority: trustme.CA) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = install(authority.issue_cert("127.0.0.1"), cert, key)
    async with running(make_config(tmp_path / "state")) as daemon:
        assert (await daemon.api.get("/readyz")).status_code == 200
        assert await daemon.reload(tls_config(tmp_path, cert, key))
        assert await served_certificate(daemon.port, authority) == first
        address = (tmp_path / "state" / statedir.ADDRESS_NAME).read_text().strip()
        assert address == f"https://127.0.0.1:{daemon.port}", "clients on this host follow"
