"""A trio test harness: the whole daemon inside your test's nursery, on port 0.

.. code-block:: python

    from voicecalld.testing import make_config, running

    async def test_places_a_call(tmp_path):
        async with running(make_config(tmp_path)) as daemon:
            response = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
            assert response.status_code == 201

:func:`running` starts the real supervisor and runtime (store, HTTP server, carriers, timers)
in-process, waits until ready, and yields a :class:`Daemon` with the base URL, an authenticated
``httpx.AsyncClient`` for the control API, and handles to reload, stop, inject start-up faults
and hold start-up steps. On exit the daemon is stopped gracefully and nothing is left behind: no
bound port, no thread, no file lock. It reads no environment (no ``LISTEN_FDS``, no
``NOTIFY_SOCKET``) unless given one. A daemon that exits before it is ready (its state dir
locked, its restart budget spent) or is not ready within a wall-clock minute raises
:class:`DaemonNotReady` naming the exit code and the failure, rather than leaving the test to
time out.

:func:`simulated` (and the ``voicecalld_sim`` pytest fixture, loaded with ``pytest_plugins =
["voicecalld.testing"]``) runs the daemon with Twilio, Plivo and Telnyx played by the carrier
simulator (:mod:`voicecalld.sim`), so tests place and receive calls as the carriers make them.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio
import trio.testing

from voicecalld import config as configuration
from voicecalld import statedir
from voicecalld.calls.manager import CallManager
from voicecalld.config import Config
from voicecalld.runtime import Faults, Runtime
from voicecalld.sim.player import SimulatedCall
from voicecalld.sim.scenario import Scenario
from voicecalld.sim.simulator import Simulator, serve_simulator
from voicecalld.supervisor import Backoff, Supervisor
from voicecalld.systemd import Notifier

__all__ = [
    "QUICK",
    "Daemon",
    "DaemonNotReady",
    "SimulatedDaemon",
    "free_port",
    "make_config",
    "running",
    "simulated",
    "simulated_config",
    "voicecalld_sim",
]


def make_config(
    state_dir: Path, document: Mapping[str, Any] | None = None, **sections: Any
) -> Config:
    """A config for tests: loopback, port 0, the given state dir, quiet logs.

    ``document`` is a TOML-shaped dict merged over those defaults (checked strictly, like a file).
    """
    base: dict[str, Any] = {
        "server": {"bind": "127.0.0.1", "port": 0},
        "store": {"state_dir": str(state_dir)},
        "api": {"token": "test-token"},
        "log": {"level": "warning"},
    }
    for name, table in {**(document or {}), **sections}.items():
        base[name] = {**base.get(name, {}), **table}
    return configuration.parse(base, environ={})


READY_TIMEOUT = 60.0
"""Wall-clock seconds :func:`running` waits for the daemon to be ready.

Wall-clock, not Trio's: on an autojump clock every wait on a thread or a socket longer than the
threshold (an SQLite open on a loaded machine) would jump Trio's clock straight to this limit.
"""
API_TIMEOUT = 30.0
"""Seconds the harness's API client waits for an answer, on a real clock (see :func:`running`)."""


class DaemonNotReady(Exception):
    """The daemon under test exited before it was ready, or was not ready in time.

    ``exit_code`` is None when it is still trying; ``failure`` is what ended its last attempt.
    """

    def __init__(self, message: str, exit_code: int | None, failure: str | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.failure = failure


@attrs.define
class Daemon:
    supervisor: Supervisor
    faults: Faults
    api: httpx.AsyncClient
    """A client for the control API of the current runtime (its base URL follows restarts)."""
    exit_code: int | None = None
    finished: trio.Event = attrs.Factory(trio.Event)
    """Set once the supervisor has returned (``exit_code`` is then set)."""

    @property
    def runtime(self) -> Runtime:
        runtime = self.supervisor.runtime
        if runtime is None:
            raise RuntimeError("the daemon is not ready")
        return runtime

    @property
    def manager(self) -> CallManager:
        manager = self.runtime.manager
        assert manager is not None
        return manager

    @property
    def url(self) -> str:
        host, port = self.runtime.addresses[0]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self.runtime.addresses[0][1]

    async def wait_ready(self) -> None:
        """Wait until the daemon is ready; raise :class:`DaemonNotReady` if it exits first."""
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, self.supervisor.ready)
            nursery.start_soon(until, self.finished)
        if self.finished.is_set():
            raise DaemonNotReady(
                f"the daemon exited with {self.exit_code} before it was ready: "
                f"{self.supervisor.last_failure or 'no failure recorded'}",
                self.exit_code,
                self.supervisor.last_failure,
            )
        self.api.base_url = httpx.URL(self.url)

    async def reload(self, config: Config) -> bool:
        applied = await self.supervisor.reload(config)
        if self.supervisor.runtime is not None:
            self.api.base_url = httpx.URL(self.url)
        return applied

    def stop(self) -> None:
        self.supervisor.stop()


@asynccontextmanager
async def running(
    config: Config,
    *,
    faults: Faults | None = None,
    wait_ready: bool = True,
    notifier: Notifier | None = None,
    environ: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> AsyncIterator[Daemon]:
    """Run the daemon in the caller's nursery; yields once it is ready (unless ``wait_ready``
    is false: then call :meth:`Daemon.wait_ready` yourself, e.g. after clearing a fault).

    Raises :class:`DaemonNotReady` (after stopping the daemon) if it exits before it is ready
    or is not ready within ``ready_timeout`` wall-clock seconds. On a
    :class:`trio.testing.MockClock` the API client has no timeout of its own, for the same
    reason (an autojump would fire it while the daemon waits on a thread); bound such a test
    with pytest-timeout instead.
    """
    faults = faults or Faults()
    supervisor = Supervisor(
        config,
        environ=environ or {},
        notifier=notifier or Notifier.from_environ({}),
        faults=faults,
        backoff=backoff or Backoff(),
    )
    token = statedir.read_api_token(config.state_dir, config.api.token)
    not_ready: DaemonNotReady | None = None
    async with (
        httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=_api_timeout()
        ) as api,
        trio.open_nursery() as nursery,
    ):
        daemon = Daemon(supervisor, faults, api)

        async def supervise() -> None:
            try:
                daemon.exit_code = await supervisor.run()
            finally:
                daemon.finished.set()

        nursery.start_soon(supervise)
        try:
            if wait_ready:
                not_ready = await _until_ready(daemon, ready_timeout)
                if not token:  # the daemon made one in the state dir on its first start
                    api.headers["Authorization"] = "Bearer " + statedir.read_api_token(
                        config.state_dir, ""
                    )
            if not_ready is None:
                yield daemon
        finally:
            supervisor.stop()
            with trio.CancelScope(shield=True):
                await daemon.finished.wait()
    if not_ready is not None:  # raised out here, not wrapped in the nursery's exception group
        raise not_ready


async def _until_ready(daemon: Daemon, limit: float) -> DaemonNotReady | None:
    """None once ``daemon`` is ready, else why it is not (exited, or not ready in ``limit``
    wall-clock seconds: a thread keeps the time, so Trio's clock, maybe mocked, is not used)."""
    done = threading.Event()
    exited: DaemonNotReady | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_after_wall_clock, done, limit, nursery.cancel_scope)
        try:
            await daemon.wait_ready()
        except DaemonNotReady as error:
            exited = error
        finally:
            done.set()
    if not nursery.cancel_scope.cancelled_caught:
        return exited
    supervisor = daemon.supervisor
    return DaemonNotReady(
        f"the daemon was not ready after {limit:g} s ({supervisor.failures} failed "
        f"attempts; the last: {supervisor.last_failure or 'none'})",
        None,
        supervisor.last_failure,
    )


async def _cancel_after_wall_clock(
    done: threading.Event, limit: float, scope: trio.CancelScope
) -> None:
    if not await trio.to_thread.run_sync(done.wait, limit, abandon_on_cancel=True):
        scope.cancel()


def _api_timeout() -> float | None:
    """:data:`API_TIMEOUT`, or none on a mock clock (its jumps would fire it; see running)."""
    mocked = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    return None if mocked else API_TIMEOUT


# -- the carrier simulator beside the daemon ---------------------------------------------------
#
# For tests that place and receive calls through Twilio, Plivo and Telnyx as they behave on the
# wire, with no account: the daemon's carriers point at a simulator (voicecalld.sim) on loopback,
# which answers their REST calls, sends signed webhooks and opens real media streams.
#
#     pytest_plugins = ["voicecalld.testing"]
#
#     async def test_an_inbound_call_streams(voicecalld_sim):
#         call = voicecalld_sim.sim.inbound("twilio", from_number="+14155550100",
#                                           to="+14155550199")
#         await call.streaming.wait()
#         record = await voicecalld_sim.daemon_call(call, ended=True)
#         assert record["end_reason"] == "completed"


QUICK = Scenario(ring=0.1, talk=1.0)
"""The far end of a test's call: it answers at once and hangs up after a second."""


@attrs.define
class SimulatedDaemon:
    """A running daemon whose carriers are a :class:`~voicecalld.sim.simulator.Simulator`."""

    daemon: Daemon
    sim: Simulator
    config: Config

    async def place(
        self, provider: str, to: str, **fields: Any
    ) -> tuple[dict[str, Any], SimulatedCall]:
        """Place a call through the control API: voicecalld's record, and the simulator's side
        of the call (its far end follows ``sim.plan(to, ...)``, else the default scenario)."""
        response = await self.daemon.api.post(
            "/v1/calls", json={"to": to, "provider": provider, **fields}
        )
        if response.status_code != 201:
            raise RuntimeError(f"placing a call failed: {response.status_code} {response.text}")
        record: dict[str, Any] = response.json()
        return record, self.sim.call(record["provider_call_id"])

    async def daemon_call(self, played: SimulatedCall, *, ended: bool = False) -> dict[str, Any]:
        """voicecalld's record of a simulated call, once it has one (and once it has ended,
        with ``ended``). Waits on the daemon's event feed: no polling."""
        ids = {played.carrier_id} | ({played.call.request_id} - {None})
        with self.daemon.manager.feed.subscribe() as events:
            record = await self._find(ids)
            while record is None or (ended and record["state"] != "ended"):
                event = await events.receive.receive()
                call = event.call
                if call.provider_call_id in ids or call.metadata.get("request_id") in ids:
                    record = call.to_json()
            return record

    async def wait_ended(self, call_id: str) -> dict[str, Any]:
        """voicecalld's record of call ``call_id`` once it has ended."""
        with self.daemon.manager.feed.subscribe() as events:
            record: dict[str, Any] = (await self.daemon.api.get(f"/v1/calls/{call_id}")).json()
            while record["state"] != "ended":
                event = await events.receive.receive()
                if event.call.id == call_id:
                    record = event.call.to_json()
            return record

    async def _find(self, ids: set[str | None]) -> dict[str, Any] | None:
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = (await self.daemon.api.get("/v1/calls", params=params)).json()
            for record in page["calls"]:
                request_id = record["metadata"].get("request_id")
                if record["provider_call_id"] in ids or request_id in ids:
                    return dict(record)
            cursor = page.get("next_cursor")
            if not cursor:
                return None


def simulated_config(
    sim: Simulator, state_dir: Path, document: Mapping[str, Any] | None = None
) -> Config:
    """A test config (:func:`make_config`) whose Twilio, Plivo and Telnyx are ``sim``.

    The daemon listens on the port of ``sim.webhook_base`` (its ``public_url``), takes inbound
    calls from anyone and drains in a second; ``document`` is merged over that, table by table.
    """
    port = urlsplit(sim.webhook_base).port
    base: dict[str, Any] = {
        "server": {"port": port, "public_url": sim.webhook_base},
        "runtime": {"drain_timeout": 1.0},
        "calls": {"inbound_policy": "open"},
        "providers": sim.providers(),
    }
    return make_config(state_dir, _merged(base, document or {}))


@asynccontextmanager
async def simulated(
    state_dir: Path,
    document: Mapping[str, Any] | None = None,
    *,
    scenario: Scenario | None = None,
    keep_audio: bool = False,
) -> AsyncIterator[SimulatedDaemon]:
    """The carrier simulator and the daemon, both on loopback, for the block's duration.

    ``scenario``: what the far end of each call does unless planned otherwise (by default
    :data:`QUICK`: answer after a tenth of a second, talk for one); ``keep_audio``: keep what
    voicecalld plays on each stream (``call.legs[0].received``).
    """
    webhook_base = f"http://127.0.0.1:{free_port()}"
    scenario = scenario or QUICK
    async with serve_simulator(webhook_base, scenario=scenario, keep_audio=keep_audio) as sim:
        config = simulated_config(sim, state_dir, document)
        async with running(config) as daemon:
            yield SimulatedDaemon(daemon, sim, config)


@pytest.fixture
async def voicecalld_sim(tmp_path: Path) -> AsyncIterator[SimulatedDaemon]:
    """A daemon with Twilio, Plivo and Telnyx played by the simulator (:func:`simulated`)."""
    async with simulated(tmp_path / "voicecalld") as lab:
        yield lab


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


_PORTS = random.SystemRandom()


def free_port() -> int:
    """A port free on loopback now, for a server whose address must be known before it starts
    (a daemon's ``public_url``).

    Drawn below the kernel's ephemeral range: a port from that range (what binding port 0
    gives) can be handed to any socket that binds port 0 meanwhile (another test's server, a
    client's connection) before our server binds it, and the daemon then fails to start.
    Drawn from the system's randomness, not :mod:`random`'s, which Hypothesis seeds the same
    for every example: every test process would try the same ports in the same order. Tried
    without ``SO_REUSEADDR``, so a port with old connections in TIME_WAIT is passed over: what
    it gives, any socket can bind. Under pytest-xdist each worker draws from its own share of
    the range: a test whose daemon lets its port go while it backs off must not find another
    worker's daemon there when it retries.
    """
    start, stop = _port_share(10_000, _ephemeral_low(), os.environ)
    for _ in range(100):
        port = _PORTS.randrange(start, stop) if stop > start + 1 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise RuntimeError("no free port on 127.0.0.1")


def _port_share(low: int, high: int, environ: Mapping[str, str]) -> tuple[int, int]:
    """This pytest-xdist worker's share of ports ``[low, high)``: all of it outside xdist."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    count = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    index = worker.removeprefix("gw")
    if not (index.isascii() and index.isdigit() and count.isascii() and count.isdigit()):
        return low, high
    width = (high - low) // max(1, int(count))
    start = low + min(int(index), int(count) - 1) * width
    return start, start + width


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
