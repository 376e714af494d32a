"""One trio task that waits for every fast-path media socket at once (Linux ``epoll``).

A carrier stream and its bridge each get a frame every 20 ms. Waking one trio task per socket
per frame costs more than the frame's own work: the task switch, trio re-arming its ``epoll``
for the socket, the cancel-scope bookkeeping of the wait. The poller keeps every media socket
in one ``select.epoll`` of its own and trio waits on that single descriptor, so one wake-up of
one task serves every socket that became readable meanwhile, each with a plain function call.

Invariants, and why:

- Sockets are watched level-triggered: one is reported for as long as it has unread bytes, so
  a callback reads once (one ``recv``) and whatever it left is reported on the next pass. A
  busy socket cannot starve the others, and nothing is lost by reading little.
- A pass calls back every socket ready at its start, then the poller waits on its descriptor
  again, which goes through trio's scheduler even when the descriptor is still readable: the
  other tasks run between passes, however busy the sockets are.
- Callbacks run in the poller's task: they never await, and must not raise. One that raises is
  logged and its socket is no longer watched (its owner is not told: owners catch their own
  errors, see :meth:`voicecalld.media.connection.WebSocket.deliver`), so one connection's bug
  cannot stop the others' media.
- A socket leaves the poller (:meth:`Poller.unwatch`) before it is closed: the kernel drops a
  closed socket from the ``epoll`` by itself, but its descriptor number may then be reused by
  the next socket, which must not inherit the old callback.
- The task is :meth:`Poller.run`, the runtime's ``media`` step: it lives as long as the
  runtime, in its nursery, beside the front door whose connections the media streams are.
  Idle, it costs one wait on a descriptor that never becomes readable. When it ends, nothing
  is watched any more (the runtime is ending: its streams are being cancelled too).

Linux only: :data:`AVAILABLE` is false elsewhere, and the media layer then gives each socket a
task of its own (:meth:`voicecalld.media.connection.WebSocket.pump`), as it does for TLS.

Example::

    poller = Poller()
    await nursery.start(poller.run)
    poller.watch(sock, on_readable)   # on_readable() runs whenever sock has bytes to read
    ...
    poller.unwatch(sock)              # before sock.close()
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
from collections.abc import Callable
from typing import Final, final

import trio

__all__ = ["AVAILABLE", "Poller"]

AVAILABLE: Final = hasattr(select, "epoll")
"""Whether this system has ``epoll`` (Linux): without it there is no :class:`Poller`."""

_log = logging.getLogger(__name__)


@final
class Poller:
    """The readiness of every watched socket, served by one task (see the module docstring)."""

    def __init__(self) -> None:
        if not AVAILABLE:
            raise RuntimeError("the media poller needs epoll (Linux)")
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._epoll: select.epoll | None = None
        """Open while :meth:`run` runs."""

    def __len__(self) -> int:
        """How many sockets are watched."""
        return len(self._callbacks)

    @property
    def running(self) -> bool:
        """Whether :meth:`run` runs: sockets can be watched."""
        return self._epoll is not None

    def watch(self, sock: socket.socket, on_readable: Callable[[], object]) -> None:
        """Call ``on_readable()`` whenever ``sock`` has bytes to read (or has ended), from the
        poller's task, until :meth:`unwatch`."""
        if self._epoll is None:
            raise RuntimeError("the media poller is not running")
        fd = sock.fileno()
        if fd in self._callbacks:
            raise RuntimeError(f"socket {fd} is already watched")
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = on_readable

    def unwatch(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (nothing happens if it was not watched)."""
        if self._callbacks.pop(sock.fileno(), None) is not None:
            assert self._epoll is not None
            self._epoll.unregister(sock)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the watched sockets until cancelled."""
        if self._epoll is not None:
            raise RuntimeError("the media poller is already running")
        with select.epoll() as epoll:
            fd = epoll.fileno()
            self._epoll = epoll
            try:
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    self._pass(epoll)
            finally:
                self._callbacks.clear()
                self._epoll = None
                trio.lowlevel.notify_closing(fd)

    def _pass(self, epoll: select.epoll) -> None:
        """Call back every socket that is ready now."""
        callbacks = self._callbacks
        for fd, _ in epoll.poll(0):
            callback = callbacks.get(fd)
            if callback is None:
                continue  # it left during this pass
            try:
                callback()
            except Exception:
                _log.exception("media socket callback failed; the socket is dropped")
                if callbacks.pop(fd, None) is not None:
                    with contextlib.suppress(OSError):  # if the callback closed it as well
                        epoll.unregister(fd)
