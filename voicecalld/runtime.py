"""The runtime: one nursery that owns everything a running daemon has.

Start-up is a fixed sequence of named steps, each started with ``nursery.start`` so it holds its
resource for the runtime's whole life and releases it in its own ``finally``:

``state-dir`` → ``store`` → ``carriers`` → ``calls`` → ``media`` → ``listen`` → ``serve`` →
``restore`` → ``reaper``

If any step fails, the nursery cancels every step already running, so by the time the failure
reaches the supervisor the port is closed, the store is closed and the lock is released; the
failure names its step (:class:`StartupError`). A failure after start-up (any task raising)
tears the runtime down the same way. Nothing here retries: that is the supervisor's job.

The runtime is ready (``READY=1``, ``/readyz`` 200) once the last step has started: serving, and
every open call of the store reconciled at least once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import trio

from voicecalld import listeners as listening
from voicecalld import statedir
from voicecalld.calls.manager import CallManager
from voicecalld.calls.reaper import Reaper
from voicecalld.calls.reconcile import Reconciler
from voicecalld.carriers.registry import Carriers
from voicecalld.config import Config, tls_context
from voicecalld.frontdoor import FrontDoor
from voicecalld.http import api, events, health, media, webhooks
from voicecalld.http.app import App, Route
from voicecalld.http.fastpath import WebhookFastPath
from voicecalld.http.health import Phase, Readiness
from voicecalld.http.server import HttpServer
from voicecalld.media.streams import MediaStreams
from voicecalld.metrics import Metrics
from voicecalld.store.sqlite import SqliteStore
from voicecalld.systemd import Notifier

__all__ = ["STEPS", "Faults", "Hold", "Runtime", "StartupError"]

log = logging.getLogger("voicecalld.runtime")

STEPS: Final = (
    "state-dir",
    "store",
    "carriers",
    "calls",
    "media",
    "listen",
    "serve",
    "restore",
    "reaper",
)
KEEP_ALIVE_TIMEOUT: Final = 5.0
"""Seconds an idle keep-alive HTTP connection is kept open (hypercorn's and the fast path's)."""
T = TypeVar("T")


class StartupError(Exception):
    """A start-up step failed; ``step`` names it (logged, counted, retried by the supervisor)."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"start-up step {step!r} failed: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause


@attrs.frozen
class Hold:
    """A start-up step kept from starting until released, so a test can act mid-start-up."""

    reached: trio.Event = attrs.Factory(trio.Event)
    """Set once an attempt has come to the step and is waiting."""
    released: trio.Event = attrs.Factory(trio.Event)

    def release(self) -> None:
        self.released.set()


class Faults:
    """Start-up faults to inject and steps to hold, by step name (the test harness arms them)."""

    def __init__(self) -> None:
        self.armed: dict[str, BaseException] = {}
        self.held: dict[str, Hold] = {}

    def arm(self, step: str, error: BaseException | None = None) -> None:
        """Make ``step`` fail, on every attempt until cleared."""
        _known(step)
        self.armed[step] = error or RuntimeError(f"injected fault at {step}")

    def hold(self, step: str) -> Hold:
        """Make attempts wait before ``step`` until :meth:`Hold.release` (e.g. ``restore``: the
        daemon serves, and is not ready)."""
        _known(step)
        hold = self.held[step] = Hold()
        return hold

    def clear(self, step: str | None = None) -> None:
        """Disarm the faults and release the holds of ``step``, or of every step."""
        for name in list(self.held) if step is None else [step]:
            held = self.held.pop(name, None)
            if held is not None:
                held.release()
        if step is None:
            self.armed.clear()
        else:
            self.armed.pop(step, None)

    async def trip(self, step: str) -> None:
        """Before each step: wait while it is held, then raise its armed fault, if any."""
        hold = self.held.get(step)
        if hold is not None:
            hold.reached.set()
            await hold.released.wait()
        error = self.armed.get(step)
        if error is not None:
            raise error


def _known(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


class Runtime:
    """One start of the daemon. Made by the supervisor for each attempt; never reused."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics,
        notifier: Notifier,
        faults: Faults | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.notifier = notifier
        self.faults = faults or Faults()
        self.environ = os.environ if environ is None else environ
        self.readiness = Readiness(metrics)
        self.token = ""
        """The control API token (``api.token``, or the state dir's ``api-token``)."""
        self.listeners: list[listening.Listener] = []
        self.addresses: list[tuple[str, int]] = []
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._frontdoor: FrontDoor | None = None
        self._app: App | None = None
        self.manager: CallManager | None = None
        self.reaper: Reaper | None = None
        self.carriers: Carriers | None = None
        self.streams: MediaStreams | None = None

    # -- life ----------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every step, report ready, serve until :meth:`stop`, then drain and close."""
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._step("state-dir", self._hold_state_dir)
            store: SqliteStore = await self._step("store", SqliteStore.serve, config.state_dir)
            self.carriers = await self._step("carriers", Carriers.serve, config, self.token)
            self.manager = CallManager(config, store, self.carriers, self.metrics)
            self.carriers.attach(self.manager.on_event)
            self.streams = MediaStreams(config, self.manager, self.metrics)
            await self._step("calls", self.manager.run)
            await self._step("media", self.streams.run)
            await self._step("listen", self._hold_listeners)
            await self._step("serve", self._serve)
            await self._step("restore", Reconciler(self.manager, self.metrics).run)
            self.reaper = Reaper(self.manager, self.metrics)
            await self._step("reaper", self.reaper.run)
            self.readiness.set(Phase.READY)
            task_status.started(self)
            await self._stop.wait()
            await self._drain()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Begin a graceful stop (SIGTERM): drain, persist, close. Safe to call twice."""
        self._stop.set()

    async def _step(self, step: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        assert self._nursery is not None
        log.debug("starting", extra={"step": step})
        try:
            await self.faults.trip(step)
            return await self._nursery.start(fn, *args)
        except Exception as error:
            self.metrics.startup_failures.inc(step=step)
            raise StartupError(step, error) from error

    # -- steps ---------------------------------------------------------------------------------

    async def _hold_state_dir(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Lock the state dir (a second daemon fails here, fast) and read or make the token."""
        state_dir, configured = self.config.state_dir, self.config.api.token
        fd = await trio.to_thread.run_sync(statedir.lock, state_dir)
        try:
            self.token = await trio.to_thread.run_sync(statedir.api_token, state_dir, configured)
            task_status.started()
            await trio.sleep_forever()
        finally:
            statedir.unlock(fd)

    async def _hold_listeners(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own the listening sockets: closed here, whatever ends the runtime."""
        try:
            server = self.config.server
            try:
                self.listeners = listening.open_listeners(server.bind, server.port, self.environ)
            except listening.PortInUse:
                if await listening.served_by_voicecalld(server.bind, server.port):
                    raise listening.PortHeldByVoicecalld(
                        f"{server.bind}:{server.port} is served by another voicecalld"
                    ) from None
                raise
            self.addresses = [listener.address for listener in self.listeners]
            self._record_address()
            task_status.started()
            await trio.sleep_forever()
        finally:
            for listener in self.listeners:
                listener.sock.close()
            (self.config.state_dir / statedir.ADDRESS_NAME).unlink(missing_ok=True)

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._nursery is not None and self.streams is not None
        config = self.config
        self._app = App(self._routes(self.token), self.metrics, config.server.trusted_proxies)
        self._frontdoor = FrontDoor(
            HttpServer(self._app, keep_alive_timeout=KEEP_ALIVE_TIMEOUT),
            self.streams.serve,
            peek_timeout=config.server.body_timeout,
            tls=tls_context(config.server),
            webhooks=WebhookFastPath(
                self._app,
                keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
                head_timeout=config.server.body_timeout,
            ),
        )
        await self._nursery.start(self._frontdoor.run)
        for listener in self.listeners:
            await self._frontdoor.listen(listener)
        task_status.started()

    def _routes(self, token: str) -> list[Route]:
        assert self.manager is not None and self.carriers is not None
        return [
            *health.routes(self.readiness, self.metrics),
            *webhooks.routes(self.manager, self.carriers, self.config, self.metrics),
            *api.routes(self.manager, self.readiness, token, self.config),
            *events.routes(self.manager, token, self.config, self.metrics),
            *media.routes(),
        ]

    # -- reload and stop -----------------------------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Apply a new, valid config without dropping live calls or streams.

        The TLS certificate and key are loaded afresh, so a renewed certificate is served to new
        connections (live ones keep theirs); if they cannot be loaded,
        :class:`~voicecalld.config.ConfigError` names the key and nothing has changed. A changed
        bind address or port opens the new socket first (if that fails the old config stays, and
        the error says why), then stops accepting on the old one and closes it.
        ``store.state_dir`` cannot change under a running store: that change waits for a restart.
        """
        old = self.config
        if config.store.state_dir != old.store.state_dir:
            log.warning(
                "store.state_dir changed: takes effect at the next restart",
                extra={"old": old.store.state_dir, "new": config.store.state_dir},
            )
            config = _with_state_dir(config, old.store.state_dir)
        # everything that can fail comes first (TLS files, the token file, the new port), so a
        # refused reload has changed nothing; what follows cannot fail
        tls = tls_context(config.server)
        token = self.token
        if config.api.token != old.api.token:
            token = statedir.api_token(config.state_dir, config.api.token)
        rebind = (config.server.bind, config.server.port) != (old.server.bind, old.server.port)
        if rebind and not any(listener.activated for listener in self.listeners):
            await self._rebind(config)
        self.config = config
        self.token = token
        assert self.manager is not None and self.carriers is not None and self._app is not None
        self.carriers.reconfigure(config, self.token)
        self.manager.reconfigure(config)
        if self.reaper is not None:
            self.reaper.reconfigure()
        if self.streams is not None:
            self.streams.reconfigure(config)
        self._app.reconfigure(self._routes(self.token), config.server.trusted_proxies)
        if self._frontdoor is not None:
            self._frontdoor.reconfigure(config.server.body_timeout)
            self._frontdoor.use_tls(tls)
        try:
            self._record_address()  # its scheme follows TLS being turned on or off
        except OSError as error:  # the reload is applied: only clients' discovery is stale
            log.warning("cannot record the API address", extra={"error": str(error)})

    async def _rebind(self, config: Config) -> None:
        assert self._frontdoor is not None
        fresh = listening.Listener(
            listening.bind_tcp(config.server.bind, config.server.port), False
        )
        old = list(self.listeners)
        try:
            await self._frontdoor.listen(fresh)
        except BaseException:
            fresh.sock.close()
            raise
        self.listeners.append(fresh)
        for listener in old:
            self._frontdoor.stop_listening(listener)
            listener.sock.close()
            self.listeners.remove(listener)
        self.addresses = [listener.address for listener in self.listeners]
        log.info("rebound", extra={"addresses": self.addresses})

    def _record_address(self) -> None:
        """Write where the API listens into the state dir, for the CLI (port 0, activation)."""
        host, port = self.addresses[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - to reach it
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.server.tls_cert else "http"
        statedir.write_private(
            self.config.state_dir / statedir.ADDRESS_NAME, f"{scheme}://{host}:{port}"
        )

    async def _drain(self) -> None:
        """SIGTERM: refuse new calls (503), keep serving webhooks, give live streams up to
        ``runtime.drain_timeout``, close the rest with 1001, then stop HTTP."""
        self.readiness.set(Phase.DRAINING)
        self.notifier.stopping()
        self.notifier.status("draining")
        log.info("draining", extra={"timeout": self.config.runtime.drain_timeout})
        if self.streams is not None:
            await self.streams.drain(self.config.runtime.drain_timeout)
        if self._frontdoor is not None:
            await self._frontdoor.drain(grace=5.0)


def _with_state_dir(config: Config, state_dir: str) -> Config:
    return attrs.evolve(config, store=attrs.evolve(config.store, state_dir=state_dir))
