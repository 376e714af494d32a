"""The supervisor's restarts (SPEC §3): exponential backoff with jitter and a cap, and a failure
budget counted over a sliding window that a reload can change.

Runs on the autojump clock. The fault is injected at ``state-dir``, before any thread or socket,
so an attempt takes no time on that clock and the gap between two attempts is the backoff alone.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio

from tests.support import wait_until
from voicecalld.runtime import Faults
from voicecalld.supervisor import Backoff
from voicecalld.testing import make_config, running

FAULT = "state-dir"


@pytest.mark.parametrize(
    ("attempt", "shortest", "longest"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (4, 4.0, 8.0), (5, 5.0, 10.0), (60, 5.0, 10.0)],
)
def test_the_delay_doubles_up_to_the_cap_and_jitter_takes_off_up_to_half(
    attempt: int, shortest: float, longest: float
) -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert backoff.delay(attempt, rng=lambda: 0.0) == shortest
    assert backoff.delay(attempt, rng=lambda: 1.0) == longest
    assert shortest < backoff.delay(attempt, rng=lambda: 0.5) < longest


class TimedFaults(Faults):
    """Faults that note the trio time of every attempt reaching the faulty step."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[float] = []

    async def trip(self, step: str) -> None:
        if step == FAULT:
            self.attempts.append(trio.current_time())
        await super().trip(step)


async def test_each_restart_waits_longer_until_the_cap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faults = TimedFaults()
    faults.arm(FAULT)
    config = make_config(tmp_path, runtime={"restart_budget": 6, "restart_window": 1000.0})
    backoff = Backoff(base=1.0, cap=4.0)
    async with running(config, faults=faults, wait_ready=False, backoff=backoff) as daemon:
        await daemon.finished.wait()
    assert daemon.exit_code == 69
    assert len(faults.attempts) == 6
    gaps = [later - earlier for earlier, later in itertools.pairwise(faults.attempts)]
    for restart, gap in enumerate(gaps, start=1):
        full = min(4.0, 2.0 ** (restart - 1))
        assert full / 2 - 1e-9 <= gap <= full + 1e-9, (restart, gaps)
    assert gaps[0] < gaps[1] < gaps[2], gaps  # jitter in [0.5, 1) never undoes a doubling


async def test_failures_further_apart_than_the_window_never_spend_the_budget(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faults = Faults()
    faults.arm(FAULT)
    config = make_config(tmp_path, runtime={"restart_budget": 2, "restart_window": 1.0})
    backoff = Backoff(base=4.0, cap=4.0)  # every delay is 2 to 4 s: wider than the window
    async with running(config, faults=faults, wait_ready=False, backoff=backoff) as daemon:
        await wait_until(lambda: daemon.supervisor.failures >= 10, timeout=100, every=1.0)
        assert not daemon.finished.is_set(), "each failure is alone in its window"
    assert daemon.exit_code == 0
    assert daemon.supervisor.metrics.restarts.get() >= 10


async def test_a_reloaded_restart_window_counts_from_the_next_failure(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faults = Faults()
    faults.arm(FAULT)
    wide = make_config(tmp_path, runtime={"restart_budget": 2, "restart_window": 1000.0})
    narrow = make_config(tmp_path, runtime={"restart_budget": 2, "restart_window": 1.0})
    backoff = Backoff(base=4.0, cap=4.0)
    async with running(wide, faults=faults, wait_ready=False, backoff=backoff) as daemon:
        await wait_until(lambda: daemon.supervisor.failures >= 1, every=0.5)
        assert await daemon.reload(narrow)  # while backing off: no runtime to reach
        await wait_until(lambda: daemon.supervisor.failures >= 5, timeout=100, every=1.0)
        assert not daemon.finished.is_set(), "a 1000 s window gives up at the 2nd failure"
    assert daemon.exit_code == 0
