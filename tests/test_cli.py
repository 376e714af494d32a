"""The client commands in process, against a daemon run by ``voicecalld.testing``."""

from __future__ import annotations

import socket
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
