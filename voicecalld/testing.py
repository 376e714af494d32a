"""A trio test harness: the whole daemon inside your test's nursery, on port 0.

.. code-block:: python

    from voicecalld.testing import make_config, running

    async def test_places_a_call(tmp_path):
        async with running(make_config(tmp_path)) as daemon:
            response = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
            assert response.status_code == 201

:func:`running` starts the real supervisor and runtime (store, HTTP server, carriers, timers)
in-process, waits until ready, and yields a :class:`Daemon` with the base URL, an authenticated
``httpx.AsyncClient`` for the control API, and handles to reload, stop and inject start-up faults.
On exit the daemon is stopped gracefully and nothing is left behind: no bound port, no thread,
no file lock. It reads no environment (no ``LISTEN_FDS``, no ``NOTIFY_SOCKET``) unless given one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from voicecalld import config as configuration
from voicecalld import statedir
from voicecalld.calls.manager import CallManager
from voicecalld.config import Config
from voicecalld.runtime import Faults, Runtime
from voicecalld.supervisor import Backoff, Supervisor
from voicecalld.systemd import Notifier

__all__ = ["Daemon", "make_config", "running"]


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


@attrs.define
class Daemon:
    supervisor: Supervisor
    faults: Faults
    api: httpx.AsyncClient
    """A client for the control API of the current runtime (its base URL follows restarts)."""
    exit_code: int | None = None

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
        await self.supervisor.ready.wait()
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
) -> AsyncIterator[Daemon]:
    """Run the daemon in the caller's nursery; yields once it is ready (unless ``wait_ready``
    is false: then call :meth:`Daemon.wait_ready` yourself, e.g. after clearing a fault)."""
    faults = faults or Faults()
    supervisor = Supervisor(
        config,
        environ=environ or {},
        notifier=notifier or Notifier.from_environ({}),
        faults=faults,
        backoff=backoff or Backoff(),
    )
    token = statedir.read_api_token(config.state_dir, config.api.token)
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as api,
        trio.open_nursery() as nursery,
    ):
        daemon = Daemon(supervisor, faults, api)
        finished = trio.Event()

        async def supervise() -> None:
            try:
                daemon.exit_code = await supervisor.run()
            finally:
                finished.set()

        nursery.start_soon(supervise)
        if wait_ready:
            with trio.fail_after(60):
                await daemon.wait_ready()
            if not token:  # the daemon made one in the state dir on its first start
                api.headers["Authorization"] = "Bearer " + statedir.read_api_token(
                    config.state_dir, ""
                )
        try:
            yield daemon
        finally:
            supervisor.stop()
            with trio.CancelScope(shield=True):
                await finished.wait()
