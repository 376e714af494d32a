"""The supervisor: runs the runtime, restarts it after failures, and owns the process's signals.

- A failure (of a start-up step, or of the running runtime) restarts the runtime in-process after
  an exponential backoff with jitter. Nothing is cached between attempts: each one builds a fresh
  :class:`~voicecalld.runtime.Runtime` from the current config.
- ``runtime.restart_budget`` failures within ``runtime.restart_window`` seconds: give up, exit 69
  (EX_UNAVAILABLE), and leave the rest to systemd.
- Another daemon holding the state dir, or serving on our port: exit 69 at once; waiting for it
  would not help. A port taken by anything else (a first daemon between two attempts, another
  program) is a start-up failure like any other: retried, then exit 69. A config
  that stopped working after it was checked (a TLS file gone) or sockets systemd passed that
  cannot be served on: exit 78 at once.
- ``trio.Cancelled`` is never a failure (it is how we stop), and a start-up failure always
  arrives after the runtime's nursery closed, so the port is released before the backoff sleep.
- A reload accepted while no runtime is ready (starting, backing off) is not lost: the next
  runtime starts with it, and one already starting applies it the moment it is up, before it is
  published as ready. ``READY=1`` is sent only while a runtime is ready (SPEC §3: serving and
  restored); a reload while starting ends with a ``STATUS=`` line and the ``READY=1`` of the
  start-up itself.

:func:`serve_process` is the ``voicecalld run`` command: one signal receiver for the whole
process lifetime (SIGHUP → :meth:`Supervisor.reload`, SIGTERM/SIGINT → :meth:`Supervisor.stop`)
and the systemd watchdog, petted from the event loop.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections import deque
from collections.abc import Callable, Mapping

import attrs
import trio

from voicecalld import config as configuration
from voicecalld import log as logs
from voicecalld import systemd
from voicecalld.config import Config, ConfigError
from voicecalld.listeners import PortHeldByVoicecalld
from voicecalld.metrics import Metrics
from voicecalld.runtime import Faults, Runtime, StartupError
from voicecalld.statedir import StateDirLocked

__all__ = ["EX_CONFIG", "EX_UNAVAILABLE", "Backoff", "Supervisor", "serve_process"]

log = logging.getLogger("voicecalld.supervisor")

EX_CONFIG = 78
EX_UNAVAILABLE = 69


@attrs.frozen
class Backoff:
    """Delay before restart ``n`` (1-based): ``base * 2**(n-1)``, capped, times a random factor in
    [0.5, 1] so a fleet restarting together spreads out."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        full = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        return full * (0.5 + 0.5 * rng())


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        notifier: systemd.Notifier | None = None,
        faults: Faults | None = None,
        backoff: Backoff = Backoff(),
        owns_logging: bool = False,
    ) -> None:
        self.config = config
        self.owns_logging = owns_logging
        """Whether reloads reconfigure the ``voicecalld`` logger: ``voicecalld run``'s, not the
        test harness's, which must leave its host process's logging as it found it."""
        self.config_path = config_path
        self.environ = os.environ if environ is None else environ
        self.metrics = metrics or Metrics()
        self.notifier = notifier or systemd.Notifier.from_environ({})
        self.faults = faults or Faults()
        self.backoff = backoff
        self.runtime: Runtime | None = None
        """The runtime while it is ready; ``None`` while starting or backing off."""
        self.ready = trio.Event()
        """Set while a runtime is ready; replaced by a fresh event when it fails."""
        self.failures = 0
        self.last_failure: str | None = None
        """What ended the last failed attempt (``start-up step 'store' failed: ...``)."""
        self._reloads = 0
        """Reloads accepted so far: an attempt that began before the latest one catches up."""
        self._started = False
        self._stopping = trio.Event()
        self._attempt_scope: trio.CancelScope | None = None
        self._reload_lock = trio.Lock()

    async def run(self) -> int:
        """Run runtimes until stopped (0) or out of restart budget (69).

        A supervisor runs once: a second ``run`` raises instead of binding the port again.
        """
        if self._started:
            raise RuntimeError("this supervisor is already running; it never starts twice")
        self._started = True
        recent: deque[float] = deque()
        while not self._stopping.is_set():
            failed = await self._attempt()
            if failed is None:
                return 0
            if isinstance(failed, int):
                return failed
            self.failures += 1
            window = self.config.runtime.restart_window  # read each time: a reload may change it
            now = trio.current_time()
            recent.append(now)
            while recent and recent[0] < now - window:
                recent.popleft()
            if len(recent) >= self.config.runtime.restart_budget:
                log.error(
                    "giving up: too many failures",
                    extra={"failures": len(recent), "window": window},
                )
                self.notifier.status(f"gave up after {len(recent)} failures in {window:g}s")
                return EX_UNAVAILABLE
            delay = self.backoff.delay(len(recent))
            self.metrics.restarts.inc()
            self.notifier.status(f"restarting in {delay:.1f}s ({failed})")
            log.warning("restarting", extra={"in_s": round(delay, 3), "attempt": len(recent) + 1})
            with trio.move_on_after(delay):
                await self._stopping.wait()
        return 0

    async def _attempt(self) -> str | int | None:
        """One runtime, start to end.

        Returns ``None`` when stopped cleanly, an exit code when retrying cannot help (another
        daemon holds the state dir: 69; a TLS file gone or systemd passing unusable sockets: 78),
        else a description of the failure, to retry.
        """
        reloads = self._reloads
        runtime = Runtime(
            self.config,
            metrics=self.metrics,
            notifier=self.notifier,
            faults=self.faults,
            environ=self.environ,
        )
        failure: str | int | None = None
        self.notifier.status("starting")
        try:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as self._attempt_scope:
                    if self._stopping.is_set():
                        return None
                    await nursery.start(runtime.run)
                    try:
                        await self._publish(runtime, reloads)
                    finally:
                        # a stop while publishing (it may wait for a reload) cancels this
                        # scope, not the started runtime, which the nursery would wait for
                        if self._stopping.is_set():
                            runtime.stop()
        except* StartupError as group:
            errors = [e for e in _leaves(group) if isinstance(e, StartupError)]
            for error in errors:
                log.error(
                    "start-up failed",
                    extra={
                        "step": error.step,
                        "error": f"{type(error.cause).__name__}: {error.cause}",
                    },
                )
            causes = [error.cause for error in errors]
            self.last_failure = str(errors[0])
            if any(isinstance(cause, StateDirLocked | PortHeldByVoicecalld) for cause in causes):
                failure = EX_UNAVAILABLE
            elif any(
                isinstance(cause, systemd.SocketActivationError | ConfigError) for cause in causes
            ):
                failure = EX_CONFIG
            else:
                failure = f"start-up step {errors[0].step} failed"
        except* Exception as group:
            crashes = _leaves(group)
            for crash in crashes:
                log.error("runtime failed", exc_info=crash)
            self.last_failure = f"runtime failed: {type(crashes[0]).__name__}: {crashes[0]}"
            failure = "runtime failed"
        finally:
            self.runtime = None
            self._attempt_scope = None
            if self.ready.is_set():
                self.ready = trio.Event()
        return failure

    async def _publish(self, runtime: Runtime, reloads: int) -> None:
        """Make a runtime that has finished starting the ready one, on the current config.

        A reload accepted while it was starting (``restore`` can take a while) changed
        :attr:`config` without reaching it: it is applied here, under the reload lock, so that no
        reload can fall between this catch-up and the runtime being published. If it cannot be
        applied (its new port taken meanwhile), the runtime keeps the config it started with.
        """
        async with self._reload_lock:
            if self._reloads != reloads:
                try:
                    await runtime.reload(self.config)
                except (ConfigError, OSError) as error:
                    log.error(
                        "the config reloaded during start-up cannot be applied; keeping the one "
                        "started with",
                        extra={"error": _describe(error)},
                    )
                    self._configure(runtime.config)
            self.runtime = runtime
            self.ready.set()
            addresses = ", ".join(f"{h}:{p}" for h, p in runtime.addresses)
            self.notifier.ready(f"serving on {addresses}")
            log.info("ready", extra={"addresses": addresses})

    def stop(self) -> None:
        """SIGTERM/SIGINT: drain and stop the runtime if it is up, else stop at once."""
        self._stopping.set()
        if self.runtime is not None:
            self.runtime.stop()
        elif self._attempt_scope is not None:
            self._attempt_scope.cancel()  # still starting: nothing to drain

    async def reload(self, config: Config | None = None) -> bool:
        """SIGHUP: re-read the config file (or apply ``config``, from the test harness).

        An invalid file (or TLS files that cannot be loaded) is logged by key and the running
        config kept. Returns whether the new config was accepted: applied to the ready runtime,
        or, while none is ready, kept for the runtime that comes up next (see :meth:`_publish`).
        """
        async with self._reload_lock:
            self.notifier.reloading()
            accepted = False
            try:
                accepted = await self._reload(config)
            finally:
                outcome = "reloaded" if accepted else "reload rejected, running config kept"
                if self.runtime is not None:
                    self.notifier.ready(outcome)
                else:  # READY=1 waits for the runtime coming up: SPEC §3
                    self.notifier.status(f"not ready yet; {outcome}")
            return accepted

    async def _reload(self, config: Config | None) -> bool:
        try:
            fresh = config or configuration.load(self.config_path, environ=self.environ)
            if self.runtime is not None:
                await self.runtime.reload(fresh)
        except (ConfigError, OSError) as error:
            log.error(
                "reload rejected, keeping the running config", extra={"error": _describe(error)}
            )
            return False
        except Exception:  # a bug: a reload must never take the daemon and its calls down
            log.exception("reload failed, keeping the running config")
            return False
        self._configure(fresh)
        self._reloads += 1
        log.info("reloaded", extra={"source": self.config_path or "<defaults>"})
        return True

    def _configure(self, config: Config) -> None:
        self.config = config
        if self.owns_logging:
            logs.configure(config.log.format, config.log.level, configuration.secrets(config))


def _describe(error: ConfigError | OSError) -> str:
    """A log field for a refused config: its dotted keys and problems, or the OS's reason."""
    if isinstance(error, ConfigError):
        return "; ".join(error.problems)
    return str(error)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        else:
            found.append(error)
    return found


async def serve_process(config: Config, config_path: str | None, environ: Mapping[str, str]) -> int:
    """``voicecalld run``: the supervisor, the signals and the watchdog, for the process's life."""
    notifier = systemd.Notifier.from_environ(environ)
    supervisor = Supervisor(
        config, config_path=config_path, environ=environ, notifier=notifier, owns_logging=True
    )
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            interval = systemd.watchdog_interval(environ)
            if interval is not None:
                await nursery.start(systemd.run_watchdog, notifier, interval)

            async def dispatch() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(supervisor.reload)
                    else:
                        log.info("stopping", extra={"signal": signal.Signals(signum).name})
                        supervisor.stop()

            nursery.start_soon(dispatch)
            code = await supervisor.run()
            notifier.stopping()
            nursery.cancel_scope.cancel()
    return code
