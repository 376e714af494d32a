"""Closed-loop HTTP/1.1 load over keep-alive connections, generated in a process of its own.

Used by bench/api and bench/webhook, for the daemon and for their bare-hypercorn baseline alike,
so both see the same client. Run by the parent as ``python bench/loadgen.py SPEC``: SPEC is a
JSON file with the port, the connection count and the exact request bytes; the process prints
one JSON line of :class:`Stats` and exits.

Invariants, and why:

- **Its own process** (its own core on a 2-core machine): the server's process spends its time
  serving, never generating load; the client's CPU share is reported, so a client-bound run
  shows itself instead of passing for a server figure.
- **Every request is sent once, in list order**, each to the next connection that is free (one
  request in flight per connection, no pipelining, as carriers and API clients behave). Callers
  that need distinct requests (signed webhooks, which would otherwise be replays) list distinct
  requests; the count is fixed, so the run ends when the last response arrives.
- **Warm-up first**: the first ``warmup`` requests go through the same connections untimed
  (connections accepted, code paths warm), then the clock starts.
- **Responses are parsed just enough** (status line and ``Content-Length``), with non-blocking
  sockets under one ``selectors`` loop: a few microseconds of Python a request, so one core of
  client outpaces one core of server.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

__all__ = ["Stats", "run_load"]

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


@dataclass
class Stats:
    requests: int
    """Timed requests (the warm-up excluded)."""
    seconds: float
    statuses: dict[str, int]
    """How many responses had each status, warm-up included: a benchmark checks them all."""
    p50_ms: float
    p99_ms: float
    client_cpu: float
    """The client's CPU seconds over the timed part divided by its wall seconds (1.0: bound)."""
    reconnects: int
    """Connections the server closed (``Connection: close``) and the client opened again."""
    server_cpu_us: float = 0.0
    """CPU microseconds the calling (server) process spent per request, warm-up included: the
    figure least disturbed by whatever else the machine runs (filled in by :func:`run_load`)."""
    server_loop_cpu_us: float = 0.0
    """The same for the calling thread alone: the event loop's share."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


class _Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = self._open()
        self.buffer = b""
        self.sent_at = 0.0
        self.reconnects = 0

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    def reconnect(self) -> None:
        """The server said ``Connection: close`` (hypercorn does after 1,000 requests on one
        connection): open a new one, as a real client would, and count it."""
        self.sock.close()
        self.sock = self._open()
        self.buffer = b""
        self.reconnects += 1


def _response_end(buffer: bytes) -> tuple[int, int, bool] | None:
    """(status, length of the whole response, whether the server closes) once ``buffer``
    holds a whole response, else None."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end]
    found = _LENGTH.search(head)
    if found is None:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    total = head_end + 4 + int(found.group(1))
    if len(buffer) < total:
        return None
    return int(head[9:12]), total, _CLOSE.search(head) is not None


def _drive(
    connections: list[_Connection], requests: Sequence[bytes], latencies: list[float]
) -> Counter[str]:
    """Send every request (one in flight per connection) and wait for every response."""
    statuses: Counter[str] = Counter()
    selector = selectors.DefaultSelector()
    next_index = 0
    in_flight = 0

    def send_next(conn: _Connection) -> bool:
        nonlocal next_index, in_flight
        if next_index >= len(requests):
            return False
        data = requests[next_index]
        next_index += 1
        conn.sent_at = time.perf_counter()
        sent = conn.sock.send(data)
        if sent != len(data):  # rare for requests this small: finish the send blocking
            conn.sock.setblocking(True)
            conn.sock.sendall(data[sent:])
            conn.sock.setblocking(False)
        in_flight += 1
        return True

    for conn in connections:
        if send_next(conn):
            selector.register(conn.sock, selectors.EVENT_READ, conn)
    while in_flight:
        for key, _ in selector.select():
            conn = key.data
            data = conn.sock.recv(262144)
            if not data:
                raise ConnectionError("the server closed a keep-alive connection")
            conn.buffer += data
            end = _response_end(conn.buffer)
            if end is None:
                continue
            status, total, closing = end
            latencies.append(time.perf_counter() - conn.sent_at)
            statuses[str(status)] += 1
            in_flight -= 1
            if len(conn.buffer) != total:
                raise ValueError("bytes after the response: the server answered twice")
            conn.buffer = b""
            if closing:
                selector.unregister(conn.sock)
                conn.reconnect()
                selector.register(conn.sock, selectors.EVENT_READ, conn)
            if not send_next(conn):
                selector.unregister(conn.sock)
    selector.close()
    return statuses


def load(port: int, requests: Sequence[bytes], connections: int, warmup: int) -> Stats:
    """Open ``connections`` to 127.0.0.1:``port``, send ``requests`` (the first ``warmup``
    untimed) and measure the rest."""
    conns = [_Connection(port) for _ in range(connections)]
    try:
        statuses = _drive(conns, requests[:warmup], [])
        latencies: list[float] = []
        cpu, wall = time.process_time(), time.perf_counter()
        reconnects = sum(conn.reconnects for conn in conns)
        statuses += _drive(conns, requests[warmup:], latencies)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        reconnects = sum(conn.reconnects for conn in conns) - reconnects
    finally:
        for conn in conns:
            conn.sock.close()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Stats(
        requests=len(latencies),
        seconds=wall,
        statuses=dict(statuses),
        p50_ms=quantiles[49] * 1000,
        p99_ms=quantiles[98] * 1000,
        client_cpu=cpu / wall,
        reconnects=reconnects,
    )


async def run_load(
    port: int, requests: Sequence[bytes], *, connections: int, warmup: int, workdir: Path
) -> Stats:
    """Run :func:`load` in a child process (from a trio program serving ``port`` meanwhile),
    and count the CPU this process spent serving it."""
    spec = workdir / "loadgen-spec.json"
    document = {
        "port": port,
        "connections": connections,
        "warmup": warmup,
        "requests": [request.decode("latin-1") for request in requests],
    }
    await trio.to_thread.run_sync(spec.write_text, json.dumps(document))
    process_cpu, loop_cpu = time.process_time(), time.thread_time()
    done = await trio.run_process(
        [sys.executable, __file__, str(spec)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    process_cpu, loop_cpu = time.process_time() - process_cpu, time.thread_time() - loop_cpu
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.decode().strip()}")
    stats = Stats(**json.loads(done.stdout))
    stats.server_cpu_us = process_cpu / len(requests) * 1e6
    stats.server_loop_cpu_us = loop_cpu / len(requests) * 1e6
    return stats


def main() -> None:
    document = json.loads(Path(sys.argv[1]).read_text())
    requests = [text.encode("latin-1") for text in document["requests"]]
    stats = load(document["port"], requests, document["connections"], document["warmup"])
    print(json.dumps(asdict(stats)))


if __name__ == "__main__":
    try:
        main()
    except Exception as failure:  # the parent shows stderr when the exit code is not 0
        print(f"loadgen: {type(failure).__name__}: {failure}", file=sys.stderr)
        raise SystemExit(1) from failure
