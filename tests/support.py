"""Helpers shared by the daemon-level tests: ports, notify sockets, subprocess daemons."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent


def refused(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (loopback refuses at once)."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


class NotifySocket:
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``, read by a thread so the
    daemon's sends never find it full."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []
        self._idle = 0  # reads that found nothing waiting
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                self._idle += 1
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        """The first message received so far (or soon) with ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if key in message and (value is None or message[key] == value):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} in {self.messages}")

    def settle(self) -> list[dict[str, str]]:
        """Every message sent so far: returns once the reader has found the socket empty (call
        it after the sender is gone)."""
        idle = self._idle
        deadline = time.monotonic() + 20.0
        while self._idle < idle + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


def write_config(path: Path, state_dir: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        f'[server]\nbind = "127.0.0.1"\nport = {port}\n'
        f'[store]\nstate_dir = "{state_dir}"\n'
        '[api]\ntoken = "test-token"\n'
        f"{extra}"
    )
    return path


class Process:
    """``voicecalld run`` in a subprocess."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.log = config.with_suffix(".log")
        self._log_file = self.log.open("w")
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VOICECALLD_", "LISTEN_", "NOTIFY_", "WATCHDOG_"))
        }
        environ.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "voicecalld", "run", "-c", str(config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=environ,
            pass_fds=pass_fds,
            cwd=ROOT,
        )

    def wait_ready(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, self.output()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"not ready on {port}:\n{self.output()}")

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._log_file.close()


@contextlib.contextmanager
def daemon(config: Path, **kwargs: object) -> Iterator[Process]:
    process = Process(config, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        process.stop()


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.01
) -> None:
    """Poll ``predicate()`` on the trio clock until true.

    Under an autojump clock each poll costs the clock's idle threshold in real time: poll
    ``every`` second or so of virtual time there.
    """
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(every)


class EventStream:
    """A minimal server-sent-events client over a raw trio stream (chunked HTTP/1.1).

    httpx's line iterators are async generators it does not close itself, which trio reports
    as ResourceWarnings when a test stops reading a stream it never finishes: this does not.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, url: str, headers: dict[str, str]) -> EventStream:
        parts = httpx.URL(url)
        stream = await trio.open_tcp_stream(parts.host, parts.port or 80)
        lines = [f"GET {parts.raw_path.decode()} HTTP/1.1", f"Host: {parts.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        self = cls(stream)
        head = await self._until(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        return self

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("stream closed")
            self.buffer += chunk
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    async def _body_line(self, pending: list[bytes]) -> bytes:
        """The next line of the chunked body."""
        while b"\n" not in pending[0]:
            size = int(await self._until(b"\r\n"), 16)
            while len(self.buffer) < size + 2:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("stream closed")
                self.buffer += chunk
            pending[0] += self.buffer[:size]
            self.buffer = self.buffer[size + 2 :]
        line, _, pending[0] = pending[0].partition(b"\n")
        return line

    async def next(self) -> dict[str, str]:
        """The next event (``{"id", "event", "data"}``) or comment (``{"comment": ...}``)."""
        if not hasattr(self, "_pending"):
            self._pending = [b""]
        event: dict[str, str] = {}
        while True:
            line = (await self._body_line(self._pending)).decode()
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            if not line:
                if event:
                    return event
                continue
            key, _, value = line.partition(": ")
            event[key] = value

    async def aclose(self) -> None:
        await self.stream.aclose()
