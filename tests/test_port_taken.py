"""A port already taken at start-up (SPEC §3): by another voicecalld, refused at once with exit
69 while the first keeps serving; by anything else (maybe a first daemon between two attempts),
retried with backoff, then exit 69. The real-process version is in test_process."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme

from voicecalld.config import Config
from voicecalld.supervisor import Backoff
from voicecalld.testing import DaemonNotReady, free_port, make_config, running


def tls_files(tmp_path: Path) -> dict[str, str]:
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return {"tls_cert": str(cert), "tls_key": str(key)}


@pytest.mark.parametrize("first_serves", ["http", "https"])
async def test_a_second_daemon_on_the_same_port_is_refused_at_once(
    tmp_path: Path, first_serves: str
) -> None:
    port = free_port()
    tls = tls_files(tmp_path) if first_serves == "https" else {}
    first_config = make_config(tmp_path / "one", server={"port": port, **tls})
    async with running(first_config) as first:
        second_config = make_config(tmp_path / "two", server={"port": port})
        async with running(second_config, wait_ready=False) as second:
            with pytest.raises(DaemonNotReady) as refused:
                await second.wait_ready()
            assert second.supervisor.failures == 0, "refused at once, never retried"
        assert first.supervisor.ready.is_set()
        async with httpx.AsyncClient(verify=False) as client:  # only: does it still answer?
            answer = await client.get(f"{first_serves}://127.0.0.1:{port}/readyz")
        assert answer.status_code == 200
    assert refused.value.exit_code == 69
    assert refused.value.failure is not None
    assert f"127.0.0.1:{port} is served by another voicecalld" in refused.value.failure


async def squat_silently(port: int, task_status: trio.TaskStatus[None]) -> None:
    """A socket that accepts connections into its backlog and never says a word."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        task_status.started()
        await trio.sleep_forever()


async def squat_with_another_service(
    port: int, task_status: trio.TaskStatus[list[trio.SocketListener]]
) -> None:
    """Another HTTP service on the port, healthy, and not voicecalld."""

    async def answer(stream: trio.SocketStream) -> None:
        body = b'{"status":"ok"}'
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        try:
            await stream.receive_some(65536)
            await stream.send_all(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    await trio.serve_tcp(answer, port, host="127.0.0.1", task_status=task_status)


Squatter = Callable[[int, trio.TaskStatus[Any]], Awaitable[None]]
SQUATTERS: list[Squatter] = [squat_silently, squat_with_another_service]


@pytest.mark.parametrize("squat", SQUATTERS, ids=["silent", "another-service"])
async def test_a_port_taken_by_another_program_is_retried_then_given_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, squat: Squatter
) -> None:
    port = free_port()
    config = make_config(tmp_path, server={"port": port}, runtime={"restart_budget": 3})
    async with trio.open_nursery() as nursery:
        await nursery.start(squat, port)
        with pytest.raises(DaemonNotReady) as gave_up:
            async with running(config, backoff=Backoff(base=1.0, cap=1.0)):
                raise AssertionError("the daemon was not expected to be ready")
        nursery.cancel_scope.cancel()
    assert gave_up.value.exit_code == 69
    assert gave_up.value.failure is not None
    assert f"127.0.0.1:{port} is already in use" in gave_up.value.failure


@pytest.fixture
def squatted_port() -> Iterator[tuple[int, socket.socket]]:
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        yield port, squatter


async def test_a_port_that_comes_free_between_attempts_is_taken(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, squatted_port: tuple[int, socket.socket]
) -> None:
    port, squatter = squatted_port
    config: Config = make_config(tmp_path, server={"port": port})
    async with running(config, wait_ready=False) as daemon:
        while daemon.supervisor.failures == 0:
            await trio.sleep(0.1)
        squatter.close()  # as a first daemon's restart would release it
        await daemon.wait_ready()
        assert daemon.port == port
        assert (await daemon.api.get("/readyz")).status_code == 200
