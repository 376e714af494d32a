"""systemd integration (SPEC §3): sd_notify, the watchdog, and socket activation.

Everything here is a no-op without systemd: a :class:`Notifier` built from an environment with no
``NOTIFY_SOCKET`` sends nothing, :func:`watchdog_interval` answers None and :func:`listen_fds`
answers ``[]``. The daemon behaves the same under a terminal, a test and systemd, except for what
it tells the service manager.

The three protocols are implemented from their documentation (sd_notify(3), sd_watchdog_enabled(3),
sd_listen_fds(3)) instead of through libsystemd or a wrapper package: each is a few lines, stable
for a decade, and not worth a dependency. Only :func:`run_watchdog` needs trio.

Invariants, and why:

- Talking to systemd never raises into the daemon. A notification that cannot be sent (the
  manager is re-executing, the socket is gone) is logged once and dropped; a daemon that dies
  because it could not *report* its state would be worse than one that reports nothing. A
  malformed field *name* is a programming error and does raise.
- One datagram per notification, so ``READY=1`` and its ``STATUS=`` arrive together.
- Watchdog pets come from a trio task, never a thread: an event loop that is stuck stops petting,
  and systemd kills and restarts us, which is the point of the watchdog.
- :func:`listen_fds` never hands out the inherited descriptors themselves, only dups made afresh
  on each call: the supervisor restarts the runtime in-process and each attempt closes its own
  sockets, while the inherited fds 3.. must outlive every attempt (systemd does not pass them
  twice).
- The environment is read, never modified. ``NOTIFY_SOCKET``, ``WATCHDOG_*`` and ``LISTEN_*``
  stay set because every in-process restart reads them again; unsetting them (as
  ``sd_notify(unset_environment=1)`` would) would silently turn the second attempt into a
  daemon that neither notifies nor finds its sockets. The usual reason to unset them — child
  processes inheriting and misusing them — does not apply: voicecalld starts no child processes,
  and the inherited fds are marked close-on-exec all the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Final, NoReturn

import trio

__all__ = [
    "LISTEN_FDS_START",
    "Notifier",
    "SocketActivationError",
    "listen_fds",
    "run_watchdog",
    "watchdog_interval",
]

logger = logging.getLogger("voicecalld.systemd")

LISTEN_FDS_START: Final = 3
"""SD_LISTEN_FDS_START: the first descriptor systemd passes."""

SEND_TIMEOUT: Final = 1.0
"""Seconds a notification may wait for room in the manager's queue.

PID 1 drains its notify socket promptly, so a full queue is momentary; waiting a little is
better than losing ``READY=1`` (systemd would then kill us at TimeoutStartSec), and a bound keeps
a wedged manager from wedging our event loop for long.
"""

MAX_VALUE_BYTES: Final = 2048
"""Longer values are cut: PID 1 ignores a whole notification that does not fit its 4 KiB buffer."""

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_DECIMAL = re.compile(r"[0-9]+\Z")


class Notifier:
    """Sends sd_notify(3) messages to the service manager; does nothing when there is none.

    Example::

        notifier = Notifier.from_environ(os.environ)
        notifier.ready("serving on 127.0.0.1:8080, 3 calls restored")
    """

    def __init__(self, address: str | None) -> None:
        """``address`` as systemd puts it in ``NOTIFY_SOCKET``: a path, ``@`` plus an abstract
        socket name, or None for a notifier that sends nothing."""
        self._address = None if address is None else _unix_address(address)
        self._reported_failure = False
        self._stopping = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """The notifier ``environ`` asks for: ``NOTIFY_SOCKET``, or a no-op when it is unset."""
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return cls(None)
        if not address.startswith(("/", "@")):
            # vsock: addresses (systemd >= 254, for VMs) and relative paths: not ours to guess.
            logger.warning("NOTIFY_SOCKET=%r is not a unix socket address: not notifying", address)
            return cls(None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (a service manager asked for them)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: start-up is done (serving, calls restored), or a reload is done."""
        self.notify(READY=1, **_status(status))

    def status(self, text: str) -> None:
        """``STATUS=``: one line for ``systemctl status``."""
        self.notify(STATUS=text)

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the event loop is alive (see :func:`run_watchdog`)."""
        self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1``: shutdown (draining) has begun.

        Sent once: a draining runtime and the ending process both announce it, and the second
        would say nothing new (its status, if any, still goes out).
        """
        if self._stopping:
            if status is not None:
                self.status(status)
            return
        self._stopping = True
        self.notify(STOPPING=1, **_status(status))

    def reloading(self, status: str | None = None) -> None:
        """``RELOADING=1`` and ``MONOTONIC_USEC``: a reload has begun; :meth:`ready` ends it.

        Type=notify-reload (systemd >= 253) requires MONOTONIC_USEC, the CLOCK_MONOTONIC time of
        the reload, to tell this reload from an earlier one; older managers ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING=1, MONOTONIC_USEC=now_usec, **_status(status))

    def notify(self, **fields: str | int) -> None:
        """Send ``NAME=value`` lines in one datagram, in the order given.

        Newlines and NULs in values become spaces (a newline would start a new field; PID 1
        ignores a message containing NUL) and long values are cut to MAX_VALUE_BYTES, so that a
        status built from an error message can never garble or void the notification.
        """
        message = _encode(fields)  # first, so that a bad field name fails without systemd too
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                # Connected, so that a full queue at PID 1 is waited on (up to the timeout) rather
                # than failing at once; a fresh socket each time survives `systemctl daemon-reexec`.
                sock.connect(self._address)
                sock.send(message)
        except OSError as error:
            self._report_failure(error, fields)

    def _report_failure(self, error: OSError, fields: Mapping[str, object]) -> None:
        names = ",".join(fields)
        if self._reported_failure:
            logger.debug("cannot notify systemd (%s): %s", names, error)
            return
        self._reported_failure = True
        logger.warning(
            "cannot notify systemd at %r (%s): %s; further failures are logged at debug level",
            self._address,
            names,
            error,
        )


def _unix_address(address: str) -> str:
    """``@name`` is systemd's spelling of the abstract socket ``\\0name``."""
    return "\0" + address[1:] if address.startswith("@") else address


def _status(text: str | None) -> dict[str, str]:
    return {} if text is None else {"STATUS": text}


def _encode(fields: Mapping[str, str | int]) -> bytes:
    lines: list[bytes] = []
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not an sd_notify field name: {name!r}")
        text = str(value).replace("\n", " ").replace("\0", " ")
        data = text.encode("utf-8", "replace")[:MAX_VALUE_BYTES]
        data = data.decode("utf-8", "ignore").encode()  # drop a character cut in half
        lines.append(name.encode() + b"=" + data)
    return b"\n".join(lines)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pets: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off: ``WATCHDOG_USEC`` unset or not a positive integer, or
    ``WATCHDOG_PID`` set to another process (the watchdog was meant for a parent of ours).
    """
    raw = environ.get("WATCHDOG_USEC")
    if raw is None:
        return None
    usec = _positive(raw)
    if usec is None:
        logger.warning("WATCHDOG_USEC=%r is not a positive integer: watchdog off", raw)
        return None
    pid_raw = environ.get("WATCHDOG_PID")
    if pid_raw is not None:
        pid = _positive(pid_raw)
        if pid is None:
            logger.warning("WATCHDOG_PID=%r is not a pid: watchdog off", pid_raw)
            return None
        if pid != os.getpid():
            logger.debug("WATCHDOG_PID=%d is not us (%d): watchdog off", pid, os.getpid())
            return None
    return usec / 2_000_000


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds, until cancelled.

    Run it in the runtime's nursery (``await nursery.start(run_watchdog, notifier, interval)``)
    for as long as the process should count as alive, draining included: it is a task of the
    event loop, so a loop blocked by a stuck call stops the pets and systemd restarts the
    service after WatchdogSec.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    task_status.started()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


class SocketActivationError(Exception):
    """systemd passed a descriptor voicecalld cannot serve on: not a listening stream socket.

    The .socket unit is misconfigured (ListenDatagram=, Accept=yes, ...), which no restart mends.
    """


def listen_fds(environ: Mapping[str, str]) -> list[socket.socket]:
    """The listening sockets systemd passed us (sd_listen_fds(3)), as fresh dups; ``[]`` if none.

    Each call dups the inherited fds 3.. anew, so the caller owns and closes what it gets while
    the inherited fds stay open for the next start attempt. The sockets are non-blocking (note:
    that flag is shared with the inherited fd) and close-on-exec, as are the inherited fds.

    An environment that passes no usable fds (``LISTEN_PID`` of another process, junk in
    ``LISTEN_FDS``, names not matching the count, an fd that is not open) gives ``[]`` and a log
    line: the daemon then binds its configured address. A passed fd that is not a listening
    ``SOCK_STREAM`` socket raises :class:`SocketActivationError` naming it.
    """
    passed = _passed_fds(environ)
    sockets: list[socket.socket] = []
    with contextlib.ExitStack() as on_failure:
        for fd, name in passed:
            sock = _adopt(fd, name, above=LISTEN_FDS_START + len(passed))
            if sock is None:
                return []  # the sockets adopted so far are closed on the way out
            sockets.append(on_failure.enter_context(sock))
        on_failure.pop_all()
    return sockets


def _passed_fds(environ: Mapping[str, str]) -> list[tuple[int, str]]:
    """``(fd, name)`` of each fd passed to us, per LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES."""
    pid_raw = environ.get("LISTEN_PID")
    if pid_raw is None:
        return []  # not socket-activated
    pid = _positive(pid_raw)
    count_raw = environ.get("LISTEN_FDS", "")
    count = 0 if count_raw == "0" else _positive(count_raw)
    if pid is None or count is None or LISTEN_FDS_START + count > os.sysconf("SC_OPEN_MAX"):
        logger.warning(
            "LISTEN_PID=%r LISTEN_FDS=%r are not valid: ignoring passed sockets", pid_raw, count_raw
        )
        return []
    if pid != os.getpid():
        logger.warning(
            "LISTEN_FDS is meant for pid %d, not us (%d): ignoring passed sockets", pid, os.getpid()
        )
        return []
    names_raw = environ.get("LISTEN_FDNAMES")
    names = ["unknown"] * count if names_raw is None else names_raw.split(":")
    if len(names) != count:
        logger.warning(
            "LISTEN_FDNAMES=%r names %d fds but LISTEN_FDS=%d: ignoring passed sockets",
            names_raw,
            len(names),
            count,
        )
        return []
    return [(LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


def _adopt(fd: int, name: str, *, above: int) -> socket.socket | None:
    """A close-on-exec dup of inherited ``fd``, numbered ``above`` or higher, as a socket.

    None (logged) if ``fd`` is not open. The floor keeps a dup from landing on a passed fd
    number that is not open, where it would pass for the inherited fd. Raises
    SocketActivationError, leaking nothing, if ``fd`` is not a listening stream socket.
    """
    try:
        os.set_inheritable(fd, False)  # as sd_listen_fds does: no child inherits it
        dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above)
    except OSError as error:
        logger.warning(
            "systemd passed fd %d (%s) but it is unusable: %s; ignoring passed sockets",
            fd,
            name,
            error,
        )
        return None
    try:
        sock = socket.socket(fileno=dup)  # family and type are read from the fd
    except OSError as error:
        os.close(dup)
        raise SocketActivationError(
            f"systemd passed fd {fd} ({name}), which is not a socket ({error.strerror}): "
            "the .socket unit must use ListenStream="
        ) from None
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if kind != socket.SOCK_STREAM or not listening:
        sock.close()
        what = "a listening" if listening else "a non-listening"
        raise SocketActivationError(
            f"systemd passed fd {fd} ({name}), {what} {_kind_name(kind)} socket; voicecalld "
            "serves only on listening stream sockets: use ListenStream= and Accept=no in the "
            ".socket unit"
        )
    sock.setblocking(False)
    return sock


def _kind_name(kind: int) -> str:
    try:
        return socket.SocketKind(kind).name
    except ValueError:
        return f"type-{kind}"


def _positive(raw: str) -> int | None:
    """A strictly positive decimal integer (ASCII digits only, as systemd parses), else None."""
    if not _DECIMAL.match(raw):
        return None
    value = int(raw)
    return value if value > 0 else None
