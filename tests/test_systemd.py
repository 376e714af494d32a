"""voicecalld.systemd against the real protocols, plus the unit files under systemd/.

Notifications are captured on a unix datagram socket standing in for PID 1 (a path and an
abstract name). Socket activation runs in a child process that plays systemd (binds sockets,
puts them on fds 3.., sets LISTEN_* and execs the "daemon"), so the fds of the test process are
never touched. The unit files are checked with systemd-analyze when it is installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voicecalld import systemd
from voicecalld.config import RuntimeConfig
from voicecalld.systemd import (
    Notifier,
    listen_fds,
    run_watchdog,
    watchdog_interval,
)

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "systemd" / "voicecalld.service"
SOCKET = ROOT / "systemd" / "voicecalld.socket"


class FakeManager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as systemd spells it in NOTIFY_SOCKET

    def notifier(self) -> Notifier:
        return Notifier.from_environ({"NOTIFY_SOCKET": self.address})

    def received(self) -> list[bytes]:
        """Every datagram queued so far (sends are synchronous, so nothing is in flight)."""
        datagrams = []
        while True:
            try:
                datagrams.append(self.sock.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                return datagrams


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeManager]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            address = str(tmp_path / "notify")
            sock.bind(address)
        else:
            name = f"voicecalld-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            address = "@" + name
        yield FakeManager(sock, address)


def fields(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode().split("\n")
    return dict(line.split("=", 1) for line in lines)


# --- sd_notify ---------------------------------------------------------------------------


def test_ready_carries_its_status_in_one_datagram(manager: FakeManager) -> None:
    manager.notifier().ready("serving on 127.0.0.1:8080, 2 calls restored")
    assert manager.received() == [b"READY=1\nSTATUS=serving on 127.0.0.1:8080, 2 calls restored"]


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.status("restoring 12 calls"), b"STATUS=restoring 12 calls"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.stopping("draining 3 calls"), b"STOPPING=1\nSTATUS=draining 3 calls"),
        (lambda n: n.notify(EXTEND_TIMEOUT_USEC=5_000_000), b"EXTEND_TIMEOUT_USEC=5000000"),
    ],
)
def test_each_notification(
    manager: FakeManager, send: Callable[[Notifier], None], expected: bytes
) -> None:
    send(manager.notifier())
    assert manager.received() == [expected]


def test_stopping_is_announced_once(manager: FakeManager) -> None:
    notifier = manager.notifier()
    notifier.stopping()
    notifier.stopping()
    notifier.stopping("stopped")
    assert manager.received() == [b"STOPPING=1", b"STATUS=stopped"]


def test_reloading_carries_the_monotonic_time_of_the_reload(manager: FakeManager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    manager.notifier().reloading("reloading /etc/voicecalld/voicecalld.toml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [datagram] = manager.received()
    sent = fields(datagram)
    assert list(sent) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert sent["RELOADING"] == "1"
    assert before <= int(sent["MONOTONIC_USEC"]) <= after
    assert sent["STATUS"] == "reloading /etc/voicecalld/voicecalld.toml"


def test_one_datagram_per_call_in_order(manager: FakeManager) -> None:
    notifier = manager.notifier()
    notifier.status("starting")
    notifier.ready("serving")
    notifier.watchdog()
    assert manager.received() == [b"STATUS=starting", b"READY=1\nSTATUS=serving", b"WATCHDOG=1"]


def test_a_value_cannot_add_fields_or_void_the_message(manager: FakeManager) -> None:
    manager.notifier().ready("bind failed:\nREADY=1\0oops")
    assert manager.received() == [b"READY=1\nSTATUS=bind failed: READY=1 oops"]


def test_a_long_value_is_cut_to_fit_pid1s_buffer_on_a_character_boundary(
    manager: FakeManager,
) -> None:
    manager.notifier().ready("é" * 5000)
    [datagram] = manager.received()
    assert len(datagram) < 4096
    status = fields(datagram)["STATUS"]  # decodes: no character cut in half
    assert status == "é" * (systemd.MAX_VALUE_BYTES // 2)


def test_a_malformed_field_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="field name"):
        Notifier(None).notify(ready=1)
    with pytest.raises(ValueError, match="field name"):
        Notifier(None).notify(**{"STATUS\nREADY": 1})


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("a no-op notifier opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        notifier = Notifier.from_environ(environ)
        assert not notifier.enabled
        notifier.ready("serving")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()


def test_an_address_that_is_not_a_unix_socket_is_refused_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="voicecalld.systemd"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:9999"})
    assert not notifier.enabled
    assert "vsock:2:9999" in caplog.text


def test_send_failures_never_raise_and_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = str(tmp_path / "notify")
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    with caplog.at_level(logging.DEBUG, logger="voicecalld.systemd"):
        notifier.ready("serving")
        notifier.watchdog()
        notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "READY,STATUS" in warnings[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2

    # The manager comes back (daemon-reexec): the next notification reaches it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        notifier.watchdog()
        assert FakeManager(sock, address).received() == [b"WATCHDOG=1"]


# --- watchdog ----------------------------------------------------------------------------

OUR_PID = str(os.getpid())


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": OUR_PID}, 15.0),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # a parent's watchdog
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-30000000"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": "3e7"}, None),
        ({"WATCHDOG_USEC": " 30000000"}, None),
        ({"WATCHDOG_USEC": "\uff13\uff10"}, None),  # fullwidth "30": int() takes it, systemd not
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


async def test_watchdog_pets_from_the_event_loop_at_the_interval(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        manager = FakeManager(sock, str(tmp_path / "notify"))
        interval = watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": OUR_PID})
        assert interval == 15.0
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, manager.notifier(), interval)
            assert manager.received() == [b"WATCHDOG=1"]  # at once: start-up may be long
            await trio.sleep(14.9)
            assert manager.received() == []
            await trio.sleep(0.2)
            assert manager.received() == [b"WATCHDOG=1"]
            await trio.sleep(15.0 * 10)
            assert manager.received() == [b"WATCHDOG=1"] * 10
            nursery.cancel_scope.cancel()
        await trio.sleep(100)
        assert manager.received() == []


async def test_watchdog_refuses_a_busy_loop_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(Notifier(None), 0.0)


# --- socket activation: environments that pass nothing usable ----------------------------


@pytest.mark.parametrize(
    ("environ", "logged"),
    [
        ({}, None),
        ({"LISTEN_FDS": "1"}, None),  # no LISTEN_PID: not socket-activated (sd_listen_fds)
        ({"LISTEN_PID": OUR_PID, "LISTEN_FDS": "0"}, None),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, "meant for pid 1"),
        ({"LISTEN_PID": "init", "LISTEN_FDS": "1"}, "not valid"),
        ({"LISTEN_PID": OUR_PID}, "not valid"),
        ({"LISTEN_PID": OUR_PID, "LISTEN_FDS": "one"}, "not valid"),
        ({"LISTEN_PID": OUR_PID, "LISTEN_FDS": "-1"}, "not valid"),
        ({"LISTEN_PID": OUR_PID, "LISTEN_FDS": "99999999999"}, "not valid"),
        ({"LISTEN_PID": OUR_PID, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}, "names 1 fds"),
    ],
)
def test_listen_fds_passes_nothing_for(
    environ: dict[str, str], logged: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # None of these environments lets listen_fds touch an fd of this test process.
    with caplog.at_level(logging.DEBUG, logger="voicecalld.systemd"):
        assert listen_fds(environ) == []
    if logged is None:
        assert caplog.records == []
    else:
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert logged in caplog.text


# --- socket activation: real inherited fds, in a child process ---------------------------

# Stage 1 plays systemd: it makes the sockets asked for in argv, moves them onto fds 3.., sets
# LISTEN_PID to its own pid (which exec keeps) and execs stage 2, the "daemon", which reports
# what listen_fds made of them as JSON on stdout.
CHILD = r"""
import fcntl, json, logging, os, socket, sys

def make(kind):
    if kind == "closed":
        return None
    if kind == "file":
        return open(os.devnull)
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        return s
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\0voicecalld-test-" + os.urandom(8).hex())
    else:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
    if kind != "tcp-not-listening":
        s.listen()
    return s

def address(s):
    name = s.getsockname()
    return name.decode("latin-1") if isinstance(name, bytes) else name  # abstract unix name

def systemd_stage(kinds):
    made = [make(kind) for kind in kinds]
    addresses = [address(m) if isinstance(m, socket.socket) else None for m in made]
    parked = [None if m is None else fcntl.fcntl(m.fileno(), fcntl.F_DUPFD, 100) for m in made]
    for m in made:
        if m is not None:
            m.close()
    for index, fd in enumerate(parked):
        if fd is not None:
            os.dup2(fd, 3 + index)  # inheritable, as systemd passes them
            os.close(fd)
    env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(kinds)),
               LISTEN_FDNAMES=":".join(kinds), TEST_ADDRESSES=json.dumps(addresses))
    os.execve(sys.executable, [sys.executable, "-c", sys.argv[1]], env)

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

def open_fds():
    return [fd for fd in range(256) if is_open(fd)]

def describe(s):
    return {"fd": s.fileno(), "family": s.family.name, "type": s.type.name,
            "blocking": s.getblocking(), "inheritable": s.get_inheritable(),
            "address": address(s)}

def daemon_stage():
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from voicecalld.systemd import SocketActivationError, listen_fds
    count = int(os.environ["LISTEN_FDS"])
    report = {"passed": json.loads(os.environ["TEST_ADDRESSES"])}
    before = open_fds()
    try:
        first = listen_fds(os.environ)
    except SocketActivationError as error:
        report["error"] = str(error)
    else:
        report["first"] = [describe(s) for s in first]
        for s in first:
            s.close()
        # A second start attempt: the inherited fds are still there, dup'd afresh.
        again = listen_fds(os.environ)
        report["again"] = [describe(s) for s in again]
        for s in again:
            client = socket.socket(s.family, socket.SOCK_STREAM)
            client.connect(s.getsockname())
            s.settimeout(5)
            connection, _ = s.accept()
            report.setdefault("accepted", []).append(address(s))
            connection.close()
            client.close()
            s.close()
    report["leaked"] = sorted(set(open_fds()) - set(before))
    report["inherited_inheritable"] = [
        os.get_inheritable(fd) for fd in range(3, 3 + count) if is_open(fd)
    ]
    print(json.dumps(report))

if "LISTEN_PID" in os.environ:
    daemon_stage()
else:
    systemd_stage(sys.argv[2].split(","))
"""


def activate(*kinds: str) -> tuple[dict[str, Any], str]:
    """Run CHILD with sockets of ``kinds`` on fds 3..; its JSON report and its log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, CHILD, ",".join(kinds)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report, done.stderr


def test_listen_fds_adopts_inherited_listening_sockets_as_independent_dups() -> None:
    report, log = activate("tcp", "unix")
    tcp, unix = report["first"]
    assert (tcp["family"], tcp["type"]) == ("AF_INET", "SOCK_STREAM")
    assert (unix["family"], unix["type"]) == ("AF_UNIX", "SOCK_STREAM")
    for described in (*report["first"], *report["again"]):
        assert described["fd"] >= 5  # a dup, above the passed fds 3 and 4
        assert described["blocking"] is False
        assert described["inheritable"] is False
    addresses = [tcp["address"], unix["address"]]
    assert addresses == report["passed"]
    # Closing the first dups kept the inherited fds: the second attempt got them again and
    # they still accept connections.
    assert [d["address"] for d in report["again"]] == addresses
    assert report["accepted"] == addresses
    assert report["inherited_inheritable"] == [False, False]  # close-on-exec, as sd_listen_fds
    assert report["leaked"] == []
    assert "WARNING" not in log


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (("tcp", "udp"), "fd 4 (udp), a non-listening SOCK_DGRAM socket"),
        (("tcp-not-listening",), "fd 3 (tcp-not-listening), a non-listening SOCK_STREAM socket"),
        (("file",), "fd 3 (file), which is not a socket"),
    ],
)
def test_listen_fds_refuses_what_it_cannot_serve_on(kinds: tuple[str, ...], message: str) -> None:
    report, _ = activate(*kinds)
    assert message in report["error"]
    assert "ListenStream=" in report["error"]
    assert report["leaked"] == []  # the dups made before the refusal were closed
    assert "first" not in report


def test_listen_fds_ignores_a_passed_fd_that_is_not_open() -> None:
    report, log = activate("tcp", "closed")
    assert report["first"] == []
    assert report["again"] == []
    assert report["leaked"] == []
    assert "fd 4 (closed) but it is unusable" in log


# --- the unit files ----------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key`` → values in order (systemd allows repeated keys), all sections merged."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_service_unit_matches_the_daemon() -> None:
    service = unit_settings(SERVICE)
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/bin/voicecalld run"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert "78" in service["RestartPreventExitStatus"][0].split()
    assert service["StateDirectory"] == ["voicecalld"]
    # The drain must finish before systemd's SIGKILL.
    assert float(service["TimeoutStopSec"][0]) > RuntimeConfig().drain_timeout
    # WatchdogSec is what systemd hands over as WATCHDOG_USEC; the daemon pets at half of it.
    usec = int(float(service["WatchdogSec"][0]) * 1_000_000)
    assert watchdog_interval({"WATCHDOG_USEC": str(usec)}) == 15.0


def test_the_socket_unit_passes_one_listening_stream_socket_on_8080() -> None:
    sock = unit_settings(SOCKET)
    assert [value.rsplit(":", 1)[-1] for value in sock["ListenStream"]] == ["8080"]
    assert sock["Accept"] == ["no"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)",
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@needs_systemd_analyze
def test_security_exposure_of_the_service_is_at_most_2() -> None:
    done = analyze("security", "--offline=true", "--no-pager", str(SERVICE))
    if "--offline" in done.stderr:
        pytest.skip(f"systemd-analyze cannot analyze offline (needs systemd >= 250): {done.stderr}")
    found = re.search(r"Overall exposure level for voicecalld\.service: ([0-9.]+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


@needs_systemd_analyze
def test_the_units_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists: point it at an executable that does.
    text = SERVICE.read_text().replace(
        "ExecStart=/usr/bin/voicecalld", f"ExecStart={sys.executable}"
    )
    (tmp_path / "voicecalld.service").write_text(text)
    shutil.copy(SOCKET, tmp_path / "voicecalld.socket")
    done = analyze(
        "verify",
        "--man=no",
        str(tmp_path / "voicecalld.socket"),
        str(tmp_path / "voicecalld.service"),
    )
    ours = [line for line in done.stderr.splitlines() if "voicecalld" in line]
    assert done.returncode == 0, done.stderr
    assert ours == []
