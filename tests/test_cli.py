"""The client commands in process, against a daemon run by ``voicecalld.testing``."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from voicecalld import cli
from voicecalld.testing import make_config, running


async def test_calls_follows_every_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "CALLS_PAGE", 2)
    config_file = tmp_path / "voicecalld.toml"
    config_file.write_text(f'[store]\nstate_dir = "{tmp_path}"\n[api]\ntoken = "test-token"\n')
    async with running(make_config(tmp_path)) as daemon:
        placed = []
        for _ in range(5):
            answer = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
            placed.append(answer.json()["id"])
        code = await trio.to_thread.run_sync(cli.main, ["calls", "-c", str(config_file)])
    assert code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == placed[::-1], "every call, newest first, each once"


async def test_status_reads_the_store_without_binding_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "voicecalld.toml"
    config_file.write_text(f'[store]\nstate_dir = "{tmp_path}"\n[api]\ntoken = "test-token"\n')
    async with running(make_config(tmp_path)) as daemon:
        await daemon.api.post("/v1/calls", json={"to": "+15551234567"})

        def refuse(*args: object) -> None:
            raise AssertionError(f"voicecalld status bound a socket: {args}")

        with monkeypatch.context() as patched:
            patched.setattr(socket.socket, "bind", refuse)
            patched.setattr(socket.socket, "listen", refuse)
            code = await trio.to_thread.run_sync(cli.main, ["status", "-c", str(config_file)])
    assert code == 0
    assert "calls: 1 (1 not ended)" in capsys.readouterr().out


async def test_hangup_sends_the_call_id_as_one_path_segment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "voicecalld.toml"
    config_file.write_text(f'[store]\nstate_dir = "{tmp_path}"\n[api]\ntoken = "test-token"\n')
    async with running(make_config(tmp_path)) as daemon:
        real = (await daemon.api.post("/v1/calls", json={"to": "+15551234567"})).json()["id"]
        for call_id in (f"x/../{real}", f"../calls/{real}", "../calls", "..", ".", "a?b#c"):
            code = await trio.to_thread.run_sync(
                cli.main, ["hangup", call_id, "-c", str(config_file)]
            )
            assert code == 1, call_id
            err = capsys.readouterr().err
            if "/" in call_id:
                # the daemon routes on the decoded path, so %2F answers "no route" for now
                assert err.startswith("voicecalld: 404: no "), err
            else:
                assert err == f"voicecalld: 404: no call {call_id}\n"
        still = (await daemon.api.get(f"/v1/calls/{real}")).json()
    assert still["end_reason"] is None, "no other call was hung up"


def _first_line_then_close(command: list[str], pipe: tuple[int, int]) -> tuple[int, bytes, bytes]:
    """Run ``command`` with its stdout on ``pipe``, read one line and close the pipe while the
    command still has more to write (as ``| head -1`` does): its exit code, line and stderr."""
    read_end, write_end = pipe
    with subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE) as process:
        os.close(write_end)
        line = b""
        while not line.endswith(b"\n"):
            byte = os.read(read_end, 1)
            assert byte, "the command wrote no complete line"
            line += byte
        os.close(read_end)
        assert process.stderr is not None
        stderr = process.stderr.read()
    return process.returncode, line, stderr


async def test_status_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    pipe = os.pipe()
    capacity = fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, 4096)  # the kernel may round it up
    # each open call is a line of over 100 bytes: more than the pipe can hold past the first
    # line, so `status` is still writing when the pipe closes
    open_calls = capacity // 100 + 100
    async with running(make_config(tmp_path, calls={"max_concurrent": open_calls})) as daemon:
        for _ in range(open_calls):
            answer = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
            assert answer.status_code == 201
    config_file = tmp_path / "voicecalld.toml"
    config_file.write_text(f'[store]\nstate_dir = "{tmp_path}"\n')
    command = [sys.executable, "-m", "voicecalld", "status", "-c", str(config_file)]
    code, line, stderr = await trio.to_thread.run_sync(_first_line_then_close, command, pipe)
    assert line.startswith(b"store: ")
    assert stderr == b"", "no traceback, nothing at all"
    assert code == 141, "128 + SIGPIPE, as if the signal had ended it"
