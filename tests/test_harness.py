"""voicecalld.testing: a daemon that cannot become ready is reported at once, with its exit code
and the failure that stopped it, instead of the test waiting out a timeout; readiness and the
API client are not fooled by an autojump clock; free_port gives ports a daemon can bind."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voicecalld import statedir
from voicecalld.config import Config
from voicecalld.listeners import bind_tcp
from voicecalld.runtime import Faults
from voicecalld.supervisor import Backoff
from voicecalld.testing import DaemonNotReady, _port_share, free_port, make_config, running


async def start(config: Config, faults: Faults | None = None) -> None:
    async with running(config, faults=faults):
        raise AssertionError("the daemon was not expected to be ready")


async def test_a_daemon_that_exits_before_it_is_ready_is_reported_at_once(tmp_path: Path) -> None:
    holder = statedir.lock(tmp_path)  # another daemon has the state dir: exit 69, no retry
    try:
        with trio.fail_after(10), pytest.raises(DaemonNotReady) as caught:
            await start(make_config(tmp_path))
    finally:
        statedir.unlock(holder)
    assert caught.value.exit_code == 69
    assert caught.value.failure is not None
    assert caught.value.failure.startswith("start-up step 'state-dir' failed: StateDirLocked")
    message = str(caught.value)
    assert "exited with 69" in message
    assert "in use by another voicecalld" in message


async def test_a_daemon_never_ready_in_time_is_reported_with_its_last_failure(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faults = Faults()
    faults.arm("state-dir")
    config = make_config(tmp_path, runtime={"restart_budget": 1000, "restart_window": 1.0})
    with pytest.raises(DaemonNotReady) as caught:
        async with running(config, faults=faults, ready_timeout=0.5):
            raise AssertionError("the daemon was not expected to be ready")
    assert caught.value.exit_code is None, "still retrying when the harness gave up"
    assert "not ready after 0.5 s" in str(caught.value)
    assert "injected fault at state-dir" in str(caught.value)


class SlowDisk(Faults):
    """Start-up waits on a thread for real time at the store step, as a loaded disk makes it."""

    async def trip(self, step: str) -> None:
        if step == "store":
            await trio.to_thread.run_sync(time.sleep, 0.3)
        await super().trip(step)


async def test_a_slow_start_up_on_an_autojump_clock_is_waited_for(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The readiness limit once lived on Trio's clock: while start-up waited on a thread, the
    # autojump went straight to it and a healthy daemon was reported as not ready.
    async with running(make_config(tmp_path), faults=SlowDisk()) as daemon:
        assert daemon.supervisor.failures == 0
        assert daemon.supervisor.ready.is_set()


async def test_the_api_client_outlasts_a_slow_answer_on_an_autojump_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # No reaper tick to jump to first: the client's own timeout is Trio's next deadline.
    config = make_config(tmp_path, calls={"reaper_interval": 3600.0})
    async with running(config) as daemon:
        manager = daemon.runtime.manager
        assert manager is not None
        store = manager.store
        write = store.write

        async def slow_write(*args: Any, **kwargs: Any) -> Any:
            await trio.to_thread.run_sync(time.sleep, 0.3)
            return await write(*args, **kwargs)

        store.write = slow_write  # type: ignore[method-assign]
        answer = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
        assert answer.status_code == 201


async def test_wait_ready_reports_a_daemon_that_gave_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faults = Faults()
    faults.arm("store")
    config = make_config(tmp_path, runtime={"restart_budget": 2})
    with pytest.RaisesGroup(pytest.RaisesExc(DaemonNotReady, match="exited with 69")):
        async with running(
            config, faults=faults, wait_ready=False, backoff=Backoff(base=1.0, cap=1.0)
        ) as daemon:
            await daemon.wait_ready()


def test_free_ports_come_from_outside_the_ephemeral_range() -> None:
    """A port that binding port 0 could hand to another socket before the daemon binds it
    (another test's server, a client) would make that daemon's start fail now and then."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not ranges.exists():
        pytest.skip("Linux tells its ephemeral range in /proc")
    low, high = map(int, ranges.read_text().split())
    ports = [free_port() for _ in range(20)]
    assert all(not low <= port <= high for port in ports), ports
    for port in ports:
        bind_tcp("127.0.0.1", port).close()  # as the daemon binds it


def test_free_ports_do_not_follow_the_seeded_random_module() -> None:
    # Hypothesis seeds `random` alike for every example, so every test process drew the same
    # ports in the same order and, with three suites at once, ran out of them.
    state = random.getstate()
    drawn = set()
    try:
        for _ in range(5):
            random.seed(0)
            drawn.add(free_port())
    finally:
        random.setstate(state)
    assert len(drawn) > 1


def test_each_xdist_worker_draws_ports_from_its_own_share() -> None:
    # a daemon backing off lets its port go; another worker's daemon once took it meanwhile
    shares = [
        _port_share(
            10_000, 32_768, {"PYTEST_XDIST_WORKER": f"gw{i}", "PYTEST_XDIST_WORKER_COUNT": "3"}
        )
        for i in range(3)
    ]
    assert shares[0][0] == 10_000 and shares[2][1] <= 32_768
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(shares)), shares
    assert _port_share(10_000, 32_768, {}) == (10_000, 32_768)
