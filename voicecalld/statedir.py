"""The state directory: its lock, and the API token kept in it.

The lock (``flock`` on ``voicecalld.lock``) is what makes a second daemon on the same store fail
fast with a clear message while the first keeps serving. ``flock`` locks belong to the open file,
so the kernel drops ours the moment the process dies: a ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Final

__all__ = [
    "ADDRESS_NAME",
    "LOCK_NAME",
    "TOKEN_NAME",
    "StateDirLocked",
    "api_token",
    "lock",
    "read_api_token",
    "unlock",
    "write_private",
]

LOCK_NAME: Final = "voicecalld.lock"
TOKEN_NAME: Final = "api-token"  # noqa: S105 - the file's name, not its content
ADDRESS_NAME: Final = "api-address"
"""Where the running daemon's API listens (``http://127.0.0.1:8080``), for clients on this host."""


class StateDirLocked(Exception):
    """Another live voicecalld holds the state dir. Not retried: waiting would not help."""


def lock(state_dir: Path) -> int:
    """Create ``state_dir`` (0700) and take its lock; returns the fd to close on exit.

    Raises :class:`StateDirLocked` naming the holder's pid when another process has it, and
    ``OSError`` when the directory cannot be made or written (a start-up failure, retried).
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirLocked(
            f"state dir {state_dir} is in use by another voicecalld (pid {holder}); not starting"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def api_token(state_dir: Path, configured: str) -> str:
    """The control API token: ``api.token`` if set, else ``state_dir/api-token``, made 0600
    with a random value on first start (clients on the same host read it from there).

    The daemon calls this holding the state dir's lock, so no other daemon writes the file
    meanwhile. It is written atomically, and a file that is empty anyway (an operator emptied
    it) gets a new token: an empty token would be a credential everyone has.
    """
    if configured:
        return configured
    token = read_api_token(state_dir, "")
    if not token:
        token = secrets.token_urlsafe(32)
        write_private(state_dir / TOKEN_NAME, token)
    return token


def read_api_token(state_dir: Path, configured: str) -> str:
    """The token as a client finds it (``api.token``, else the file); '' when there is none."""
    if configured:
        return configured
    try:
        return (state_dir / TOKEN_NAME).read_text().strip()
    except OSError:
        return ""


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.replace(temporary, path)
