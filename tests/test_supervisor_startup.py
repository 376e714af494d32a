"""The daemon while it starts (SPEC §3, §4): held start-up steps, reloads and stops meanwhile, and
what systemd is told.

A step is held with ``Faults.hold``: held at ``restore`` the daemon serves HTTP but is not ready
(its calls are not restored yet), the longest stretch of a real start-up.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.support import NotifySocket, refused, wait_until
from voicecalld.runtime import STEPS, Faults
from voicecalld.systemd import Notifier
from voicecalld.testing import free_port, make_config, running


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def notifier(sock: NotifySocket) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": sock.path})


async def after_reloading(sock: NotifySocket) -> dict[str, str]:
    """The notification that ended the (only) reload."""
    await wait_until(lambda: any("RELOADING" in m for m in sock.messages))
    index = next(i for i, m in enumerate(sock.messages) if "RELOADING" in m)
    await wait_until(lambda: len(sock.messages) > index + 1)
    return sock.messages[index + 1]


async def test_a_reload_while_starting_reaches_the_runtime_that_comes_up(
    tmp_path: Path, notify: NotifySocket
) -> None:
    port = free_port()
    faults = Faults()
    hold = faults.hold("restore")
    config = make_config(tmp_path, server={"port": port})
    async with running(
        config, faults=faults, wait_ready=False, notifier=notifier(notify)
    ) as daemon:
        await hold.reached.wait()
        fresh = make_config(
            tmp_path, server={"port": port}, api={"token": "rotated"}, calls={"max_concurrent": 3}
        )
        assert await daemon.reload(fresh)
        ended = await after_reloading(notify)
        assert "READY" not in ended, "READY=1 means serving and restored: not yet"
        assert ended["STATUS"].startswith("not ready yet")

        hold.release()
        await daemon.wait_ready()
        assert daemon.runtime.config.calls.max_concurrent == 3
        assert daemon.runtime.config == daemon.supervisor.config
        assert (await daemon.api.get("/v1/calls")).status_code == 401, "the old token is gone"
        daemon.api.headers["Authorization"] = "Bearer rotated"
        assert (await daemon.api.get("/v1/calls")).status_code == 200
        await wait_until(lambda: any("READY" in m for m in notify.messages))
        readies = [m for m in notify.messages if "READY" in m]
        assert readies == [{"READY": "1", "STATUS": f"serving on 127.0.0.1:{port}"}]


async def test_a_reload_while_starting_that_cannot_apply_keeps_the_started_config(
    tmp_path: Path,
) -> None:
    port, taken = free_port(), free_port()
    faults = Faults()
    hold = faults.hold("restore")
    config = make_config(tmp_path, server={"port": port})
    async with running(config, faults=faults, wait_ready=False) as daemon:
        await hold.reached.wait()
        assert await daemon.reload(make_config(tmp_path, server={"port": taken}))
        with socket.socket() as squatter:  # the new port is taken before the runtime is up
            squatter.bind(("127.0.0.1", taken))
            squatter.listen()
            hold.release()
            await daemon.wait_ready()
        assert daemon.port == port
        assert daemon.supervisor.config.server.port == port, "the supervisor tells what runs"
        assert (await daemon.api.get("/readyz")).status_code == 200


async def test_a_rejected_reload_ends_with_ready_and_says_it_was_rejected(
    tmp_path: Path, notify: NotifySocket
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[calls]\nmax_concurrent = "lots"\n')
    async with running(make_config(tmp_path / "state"), notifier=notifier(notify)) as daemon:
        daemon.supervisor.config_path = str(bad)  # what SIGHUP reads
        assert not await daemon.supervisor.reload()
        ended = await after_reloading(notify)
        assert ended["READY"] == "1", "systemd waits for READY=1 to end the reload"
        assert "rejected" in ended["STATUS"]
        assert (await daemon.api.get("/readyz")).status_code == 200


async def test_a_rejected_reload_while_starting_sends_no_ready(
    tmp_path: Path, notify: NotifySocket
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[calls]\nmax_concurrent = "lots"\n')
    faults = Faults()
    hold = faults.hold("restore")
    config = make_config(tmp_path / "state")
    async with running(
        config, faults=faults, wait_ready=False, notifier=notifier(notify)
    ) as daemon:
        await hold.reached.wait()
        daemon.supervisor.config_path = str(bad)
        assert not await daemon.supervisor.reload()
        ended = await after_reloading(notify)
        assert "READY" not in ended
        assert "rejected" in ended["STATUS"]
        hold.release()
        await daemon.wait_ready()


async def test_not_ready_while_restoring(tmp_path: Path) -> None:
    port = free_port()
    faults = Faults()
    hold = faults.hold("restore")
    config = make_config(tmp_path, server={"port": port})
    async with (
        running(config, faults=faults, wait_ready=False) as daemon,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer test-token"}
        ) as client,
    ):
        await hold.reached.wait()
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "starting"})
        placed = await client.post("/v1/calls", json={"to": "+15551234567"})
        assert placed.status_code == 503
        assert placed.json()["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200
        hold.release()
        await daemon.wait_ready()
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("step", STEPS)
async def test_a_stop_during_start_up_exits_0_counting_no_failure(
    tmp_path: Path, step: str
) -> None:
    port = free_port()
    faults = Faults()
    hold = faults.hold(step)
    config = make_config(tmp_path, server={"port": port})
    async with running(config, faults=faults, wait_ready=False) as daemon:
        await hold.reached.wait()
        daemon.stop()
        await daemon.finished.wait()
    assert daemon.exit_code == 0
    assert daemon.supervisor.failures == 0
    metrics = daemon.supervisor.metrics
    assert not any(metrics.startup_failures.values.values())
    assert metrics.restarts.get() == 0
    assert refused(port)


async def test_a_stop_while_a_started_runtime_is_published_drains_and_exits_0(
    tmp_path: Path,
) -> None:
    """Between "started" and "ready" (the publish, which can wait for a reload in flight) a
    SIGTERM must still stop the runtime: it had started, so cancelling the start-up alone left
    it serving, and the daemon never exited."""
    port = free_port()
    faults = Faults()
    hold = faults.hold("reaper")  # the last step: released, the runtime has started
    config = make_config(tmp_path, server={"port": port})
    async with running(config, faults=faults, wait_ready=False) as daemon:
        await hold.reached.wait()
        # a reload in flight holds the lock the publish takes (white-box: no reload is slow
        # enough to be caught at this point otherwise)
        async with daemon.supervisor._reload_lock:
            hold.release()
            await wait_until(lambda: daemon.supervisor._attempt_scope is not None)
            await trio.sleep(0.1)  # the runtime has started; its publish waits for the lock
            assert not daemon.supervisor.ready.is_set()
            daemon.stop()
        with trio.fail_after(10):
            await daemon.finished.wait()
    assert daemon.exit_code == 0
    assert refused(port)
