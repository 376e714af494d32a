"""The runtime and its supervisor, in-process through voicecalld.testing (SPEC §3).

Backoff sleeps run on a mock clock that jumps ahead once every task has been idle for a moment
(real sockets and the store's thread still get real time to answer).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.support import refused, wait_until
from voicecalld import statedir
from voicecalld.listeners import bind_tcp
from voicecalld.runtime import STEPS, Faults
from voicecalld.supervisor import Backoff
from voicecalld.testing import free_port, make_config, running

FAST = Backoff(base=0.5, cap=2.0)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def lockable(state_dir: Path) -> bool:
    """Whether another daemon could take the state dir's lock now (no attempt holds it)."""
    fd = os.open(state_dir / statedir.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops our lock too
    return True


@pytest.mark.parametrize("step", STEPS)
async def test_a_failed_step_releases_the_port_before_the_retry(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, step: str
) -> None:
    port = free_port()
    faults = Faults()
    faults.arm(step)
    config = make_config(tmp_path, server={"port": port})
    async with running(
        config, faults=faults, wait_ready=False, backoff=Backoff(base=30, cap=30)
    ) as daemon:
        await wait_until(lambda: daemon.supervisor.failures >= 1)
        assert refused(port), "the port must be closed while backing off"
        assert lockable(tmp_path), "the state dir's lock must be released while backing off"
        metrics = daemon.supervisor.metrics
        assert metrics.startup_failures.get(step=step) == 1
        assert metrics.restarts.get() == 1
        assert any(getattr(r, "step", None) == step for r in caplog.records), (
            "the log names the step"
        )
        faults.clear()
        await daemon.wait_ready()
        response = await daemon.api.get("/readyz")
        assert response.status_code == 200
        assert daemon.port == port
        assert daemon.supervisor.failures == 1


async def test_a_runtime_failure_restarts_the_runtime(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path), backoff=FAST) as daemon:
        first = daemon.runtime

        async def crash() -> None:
            raise RuntimeError("boom")

        assert first._nursery is not None  # the test reaches in to make a task fail
        first._nursery.start_soon(crash)
        await wait_until(lambda: daemon.supervisor.runtime not in (None, first), every=0.25)
        assert daemon.supervisor.metrics.restarts.get() == 1
        await daemon.wait_ready()
        assert (await daemon.api.get("/healthz")).status_code == 200


async def test_a_busy_port_is_retried_then_gives_up_with_69(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = make_config(tmp_path, server={"port": port}, runtime={"restart_budget": 3})
        async with running(config, wait_ready=False, backoff=FAST) as daemon:
            await wait_until(lambda: daemon.exit_code is not None, timeout=60, every=0.5)
        assert daemon.exit_code == 69
        assert daemon.supervisor.failures == 3
        assert daemon.supervisor.metrics.startup_failures.get(step="listen") == 3


async def test_a_locked_state_dir_fails_fast_with_69(tmp_path: Path) -> None:
    fd = statedir.lock(tmp_path)
    try:
        async with running(make_config(tmp_path), wait_ready=False) as daemon:
            await wait_until(lambda: daemon.exit_code is not None)
        assert daemon.exit_code == 69
        assert daemon.supervisor.failures == 0, "not retried: waiting would not help"
    finally:
        statedir.unlock(fd)


async def test_a_supervisor_never_starts_twice(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon:
        with pytest.raises(RuntimeError, match="never starts twice"):
            await daemon.supervisor.run()
        assert (await daemon.api.get("/readyz")).status_code == 200


async def test_reload_rebinds_a_changed_port(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as daemon:
        old = daemon.port
        new = free_port()
        assert await daemon.reload(make_config(tmp_path, server={"port": new}))
        assert daemon.port == new
        assert refused(old)
        assert (await daemon.api.get("/readyz")).status_code == 200


async def test_reload_to_a_busy_port_keeps_the_old_config(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        async with running(make_config(tmp_path)) as daemon:
            old = daemon.port
            busy = make_config(tmp_path, server={"port": squatter.getsockname()[1]})
            assert not await daemon.reload(busy)
            assert daemon.port == old
            assert daemon.supervisor.config.server.port == 0
            assert (await daemon.api.get("/readyz")).status_code == 200


async def test_reload_applies_a_new_token(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon:
        assert (await daemon.api.get("/v1/calls")).status_code == 200
        assert await daemon.reload(make_config(tmp_path, api={"token": "rotated"}))
        assert (await daemon.api.get("/v1/calls")).status_code == 401
        daemon.api.headers["Authorization"] = "Bearer rotated"
        assert (await daemon.api.get("/v1/calls")).status_code == 200


async def test_a_reload_that_fails_part_way_changes_nothing(tmp_path: Path) -> None:
    """The token file cannot be written: the reload is refused before anything is applied,
    so what the supervisor reports (rejected, old config) is what runs."""
    async with running(make_config(tmp_path)) as daemon:
        (tmp_path / statedir.TOKEN_NAME).mkdir()  # a file token cannot be made there
        fresh = make_config(tmp_path, api={"token": ""}, calls={"max_concurrent": 3})
        assert not await daemon.reload(fresh)
        assert daemon.runtime.config.calls.max_concurrent == 10
        assert daemon.runtime.config == daemon.supervisor.config
        assert (await daemon.api.get("/v1/calls")).status_code == 200, "the old token works"


async def test_a_reload_applies_even_if_the_api_address_cannot_be_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The address file only helps clients find the daemon: failing to rewrite it is logged,
    and the reload, already applied, is reported as applied."""
    async with running(make_config(tmp_path)) as daemon:
        (tmp_path / (statedir.ADDRESS_NAME + ".tmp")).mkdir()  # its atomic write fails
        fresh = make_config(tmp_path, api={"token": "rotated"}, calls={"max_concurrent": 3})
        assert await daemon.reload(fresh)
        assert daemon.runtime.config.calls.max_concurrent == 3
        assert daemon.runtime.config == daemon.supervisor.config
        assert "cannot record the API address" in caplog.text


async def test_the_harness_leaves_the_host_processs_logging_alone_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``voicecalld run`` reconfigures its logging on SIGHUP; the harness runs inside someone
    else's test process, whose handlers (pytest's capture) must keep working."""
    logger = logging.getLogger("voicecalld")
    before = (list(logger.handlers), logger.propagate, logger.level)
    async with running(make_config(tmp_path)) as daemon:
        assert await daemon.reload(make_config(tmp_path, log={"level": "debug", "format": "json"}))
        assert (list(logger.handlers), logger.propagate, logger.level) == before
        caplog.set_level("INFO", logger="voicecalld")
        assert await daemon.reload(make_config(tmp_path))
    assert "reloaded" in caplog.text, "still seen by the host's capture"


async def test_draining_refuses_new_calls_and_readiness(tmp_path: Path) -> None:
    config = make_config(tmp_path, runtime={"drain_timeout": 5.0})
    async with running(config) as daemon:
        runtime = daemon.runtime
        runtime.readiness.set(runtime.readiness.phase.DRAINING)
        assert (await daemon.api.get("/readyz")).status_code == 503
        response = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert (await daemon.api.get("/healthz")).status_code == 200


async def test_unknown_routes_and_methods_answer_json(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon:
        missing = await daemon.api.get("/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        wrong = await daemon.api.delete("/healthz")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET"
        metrics = (await daemon.api.get("/metrics")).text
        assert 'voicecalld_http_requests_total{route="<404>",status="404"} 1' in metrics
        assert 'voicecalld_build_info{version="' in metrics


async def test_a_media_url_without_an_upgrade_is_refused_as_the_handshake_would(
    tmp_path: Path,
) -> None:
    """Someone checking the stream URL with curl, or a proxy that dropped Upgrade: GET goes to
    the media fast path (400), other methods to the app, which answers as its handshake does
    (405, Allow: GET) rather than a 404 that says the URL is wrong."""
    async with running(make_config(tmp_path)) as daemon:
        plain = await daemon.api.get("/media/twilio")
        assert plain.status_code == 400
        assert "Upgrade: websocket" in plain.text
        for method in ("POST", "PUT"):
            answer = await daemon.api.request(method, "/media/twilio")
            assert (answer.status_code, answer.headers["allow"]) == (405, "GET"), method


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_harness_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_port()
    config = make_config(tmp_path, server={"port": port})
    for _ in range(5):  # warm caches (trio's thread cache, httpx, imports)
        async with running(config):
            pass
    fds, threads = _fds(), threading.active_count()
    for _ in range(100):
        async with running(config) as daemon:
            assert daemon.port == port
    assert refused(port)
    bind_tcp("127.0.0.1", port).close()  # the port binds again, as a daemon binds it
    assert _fds() <= fds
    assert threading.active_count() <= threads
    fd = statedir.lock(tmp_path)  # and the state dir's lock is free
    statedir.unlock(fd)


async def test_the_api_needs_the_token(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path)) as daemon,
        httpx.AsyncClient(base_url=daemon.url) as anonymous,
    ):
        assert (await anonymous.get("/v1/calls")).status_code == 401
        wrong = await anonymous.get("/v1/calls", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


async def test_a_generated_token_is_private(tmp_path: Path) -> None:
    config = make_config(tmp_path, api={"token": ""})
    async with running(config) as daemon:
        token_file = tmp_path / statedir.TOKEN_NAME
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert (await daemon.api.get("/v1/calls")).status_code == 200


@pytest.mark.parametrize("content", ["", "\n", "   "])
async def test_an_empty_token_file_gets_a_new_token_not_an_open_door(
    tmp_path: Path, content: str
) -> None:
    # a token file left empty (a crash mid-write before writes were atomic, an operator's
    # truncation) must never make "Bearer " with nothing after it a valid credential
    config = make_config(tmp_path, api={"token": ""})
    (tmp_path / statedir.TOKEN_NAME).write_text(content)
    async with (
        running(config) as daemon,
        httpx.AsyncClient(base_url=daemon.url) as anonymous,
    ):
        for header in ("Bearer", "bearer"):  # no credential: compared with an empty one
            refused = await anonymous.get("/v1/calls", headers={"Authorization": header})
            assert refused.status_code == 401, header
        token = (tmp_path / statedir.TOKEN_NAME).read_text().strip()
        assert len(token) >= 32
        assert (tmp_path / statedir.TOKEN_NAME).stat().st_mode & 0o777 == 0o600
        assert (await daemon.api.get("/v1/calls")).status_code == 200
