"""The daemon as a real process: signals, sd_notify, socket activation, a second daemon, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, NotifySocket, daemon, refused, write_config
from voicecalld.testing import free_port

AUTH = {"Authorization": "Bearer test-token"}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "voicecalld", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exits:
        yield exits


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def test_sighup_and_sigterm_with_sd_notify(tmp_path: Path, notify: NotifySocket) -> None:
    port = free_port()
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", port)
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}
    with daemon(config, env=env) as process:
        process.wait_ready(port)
        ready = notify.wait_for("READY", "1")
        assert f"127.0.0.1:{port}" in ready["STATUS"]
        notify.wait_for("WATCHDOG", "1")

        # an invalid config: logged by key, the old one kept, still serving
        good = config.read_text()
        config.write_text(good + '[calls]\nmax_concurrent = "lots"\n')
        process.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        monotonic = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
        assert abs(int(reloading["MONOTONIC_USEC"]) - monotonic) < 10e6
        deadline = time.monotonic() + 10
        while "calls.max_concurrent" not in process.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "calls.max_concurrent" in process.output()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200

        # a valid one with a new port: rebound, the old port released, the new token in force
        new_port = free_port()
        write_config(config, tmp_path / "state", new_port)
        config.write_text(config.read_text().replace('token = "test-token"', 'token = "rotated"'))
        notify.messages.clear()
        process.signal(signal.SIGHUP)
        process.wait_ready(new_port)
        assert refused(port)
        rotated = httpx.get(
            f"http://127.0.0.1:{new_port}/v1/calls", headers={"Authorization": "Bearer rotated"}
        )
        assert rotated.status_code == 200
        assert notify.wait_for("READY", "1")

        process.signal(signal.SIGTERM)
        assert process.wait() == 0
        notify.wait_for("STOPPING", "1")
        assert [m for m in notify.settle() if "STOPPING" in m] == [{"STOPPING": "1"}]
        assert refused(new_port)


def test_a_second_daemon_on_the_same_state_dir_fails_fast(tmp_path: Path, stack: ExitStack) -> None:
    port = free_port()
    first_config = write_config(tmp_path / "first.toml", tmp_path / "state", port)
    second_config = write_config(tmp_path / "second.toml", tmp_path / "state", free_port())
    with daemon(first_config) as first:
        first.wait_ready(port)
        second = stack.enter_context(daemon(second_config))
        started = time.monotonic()
        assert second.wait(timeout=20) == 69
        assert time.monotonic() - started < 10
        assert "is in use by another voicecalld" in second.output()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200


def test_a_second_daemon_on_the_same_port_fails_fast(tmp_path: Path, stack: ExitStack) -> None:
    port = free_port()
    first_config = write_config(tmp_path / "first.toml", tmp_path / "one", port)
    second_config = write_config(tmp_path / "second.toml", tmp_path / "two", port)
    with daemon(first_config) as first:
        first.wait_ready(port)
        second = stack.enter_context(daemon(second_config))
        assert second.wait(timeout=20) == 69
        assert f"127.0.0.1:{port} is served by another voicecalld" in second.output()
        assert "restarting" not in second.output()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200


def test_socket_activation(tmp_path: Path, notify: NotifySocket) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    os.set_inheritable(listener.fileno(), True)
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", 1)  # port 1: ignored
    # systemd puts the socket at fd 3 and the daemon's own pid in LISTEN_PID; so does this
    launcher = (
        "import os, sys; "
        f"os.dup2({listener.fileno()}, 3); os.close({listener.fileno()}); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.executable, [sys.executable, '-m', 'voicecalld', 'run', "
        f"'-c', {str(config)!r}])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["NOTIFY_SOCKET"] = notify.path
    log = (tmp_path / "activated.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", launcher],
        pass_fds=(listener.fileno(),),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    listener.close()  # only the daemon holds it now
    try:
        notify.wait_for("READY", "1")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_cli_places_lists_and_hangs_up_then_status_reads_the_store(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", port)
    with daemon(config) as process:
        process.wait_ready(port)
        call_id = cli("call", "+15551234567", "-c", str(config)).stdout.strip()
        assert call_id.startswith("c_")
        listing = cli("calls", "--active", "-c", str(config)).stdout
        assert call_id in listing
        assert "outbound" in listing
        hung = cli("hangup", call_id, "-c", str(config)).stdout
        assert hung.split() == [call_id, "ended", "hangup-bot"]
        bad = cli("call", "12345", "-c", str(config), check=False)
        assert bad.returncode == 1
        assert "to: expected an E.164 number" in bad.stderr
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    status = cli("status", "-c", str(config)).stdout  # no daemon, no port
    assert "calls: 1 (0 not ended)" in status


def test_status_never_binds_and_works_beside_a_running_daemon(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", port)
    assert "no store yet" in cli("status", "-c", str(config)).stdout
    assert refused(port)
    with daemon(config) as process:
        process.wait_ready(port)
        cli("call", "+15551234567", "-c", str(config))
        status = cli("status", "-c", str(config)).stdout
        assert "calls: 1 (1 not ended)" in status
        assert "+15551234567" in status


def test_clients_without_a_daemon_fail_clearly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", free_port())
    result = cli("calls", "-c", str(config), check=False)
    assert result.returncode == 1
    assert "cannot reach the daemon" in result.stderr


def test_missing_tls_files_exit_78_at_once_without_binding(tmp_path: Path) -> None:
    port = free_port()
    extra = f'tls_cert = "{tmp_path}/gone.pem"\ntls_key = "{tmp_path}/gone-key.pem"\n'
    config = write_config(tmp_path / "voicecalld.toml", tmp_path / "state", port)
    config.write_text(config.read_text().replace("[store]", extra + "[store]"))
    result = cli("run", "-c", str(config), check=False)
    assert result.returncode == 78, "never retried: systemd's RestartPreventExitStatus=78"
    assert "server.tls_cert: cannot read" in result.stderr
    assert not (tmp_path / "state").exists(), "refused before anything started"
    checked = cli("check-config", "-c", str(config), check=False)
    assert checked.returncode == 78
    assert "server.tls_cert: cannot read" in checked.stderr
    # the files are the daemon's: a client (another user, outside the service's credentials)
    # shares the config but need not read the key
    status = cli("status", "-c", str(config))
    assert "no store yet" in status.stdout
