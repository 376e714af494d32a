"""``voicecalld simulate``: init, a real load run against a daemon, serve, and its refusals."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import trio
import trio.testing

from voicecalld import cli
from voicecalld import config as configuration
from voicecalld.config import Config
from voicecalld.sim import cli as sim_cli
from voicecalld.sim.audio import Audio
from voicecalld.sim.scenario import Scenario
from voicecalld.sim.stats import Tally
from voicecalld.testing import free_port, make_config, running


def init(tmp_path: Path, *extra: str) -> tuple[Path, Config]:
    path = tmp_path / "sim.toml"
    ports = ["--port", str(free_port()), "--sim-port", str(free_port())]
    argv = ["init", str(path), *ports, "--state-dir", str(tmp_path / "state"), *extra]
    assert sim_cli.simulate(Config(), argv) == 0
    return path, configuration.load(path, environ={})


def test_init_writes_a_private_config_for_the_three_carriers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = init(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600, "it holds credentials"
    assert config.providers.enabled() == ["mock", "twilio", "plivo", "telnyx"]
    bases = {config.providers.twilio.api_base_url, config.providers.telnyx.api_base_url}
    assert len(bases) == 1
    assert config.calls.inbound_policy == "open"
    assert "voicecalld run -c" in capsys.readouterr().out
    assert sim_cli.simulate(Config(), ["init", str(path)]) == 2, "never overwrites unasked"
    assert sim_cli.simulate(Config(), ["init", str(path), "--force"]) == 0


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({}, "no carrier is enabled"),
        (
            {
                "providers": {
                    "twilio": {"enabled": True, "account_sid": "AC" + "0" * 32, "auth_token": "x"}
                }
            },
            "not the simulator's",
        ),
    ],
)
def test_run_refuses_a_config_of_real_carriers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: dict[str, object], complaint: str
) -> None:
    document = {**document, "server": {"public_url": "https://voice.example.com"}}
    config = make_config(tmp_path, document)
    assert sim_cli.simulate(config, ["run"]) == 1
    assert complaint in capsys.readouterr().err


def test_run_refuses_a_telnyx_key_it_cannot_sign_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = init(tmp_path)
    text = path.read_text().replace(
        config.providers.telnyx.public_key, "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    )
    path.write_text(text)
    assert sim_cli.simulate(Config(), ["run", "-c", str(path), "--provider", "telnyx"]) == 1
    assert "public_key is not the simulator's" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["run", "--calls", "0"], ["run", "--busy", "60", "--failed", "50"], ["fly"], ["run", "-x"]],
)
def test_usage_errors_are_exit_2(tmp_path: Path, argv: list[str]) -> None:
    _, config = init(tmp_path)
    assert sim_cli.simulate(config, argv) == 2


def test_an_invalid_config_is_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = '80'\n")
    assert sim_cli.simulate(Config(), ["run", "-c", str(bad)]) == 78


async def test_a_load_run_against_a_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = init(tmp_path)
    argv = [
        "simulate",
        "-c",
        str(path),
        "run",
        "--provider",
        "all",
        "--direction",
        "mixed",
        "--calls",
        "9",
        "--rate",
        "30",
        "--ring",
        "0.05",
        "--talk",
        "0.3",
        "--fault",
        "replayed",
    ]
    async with running(config):
        code = await trio.to_thread.run_sync(cli.main, argv)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "simulating twilio, plivo, telnyx" in err
    progress = r"calls \d/9 started, \d live, \d ended  \|  webhooks \d+ \(0 not 2xx\)  \|  frames"
    assert re.search(progress, err), "the live progress line"
    assert "calls (carrier side)" in out
    assert re.search(r"calls \(carrier side\)\n.*\n.*\n  completed +9\n", out)
    assert re.search(r"calls \(voicecalld's record\)\n.*\n.*\n  completed +9\n", out)
    assert re.search(r"twilio fetch \(replayed\) +200 +3\n", out), "one a direction"
    assert re.search(r"streams opened +9\n", out)
    for latency in ("api", "setup", "webhook"):
        assert f"\n  {latency} " in out


async def test_run_says_when_the_daemon_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = init(tmp_path)
    async with running(config):
        pass  # started once: the API token exists, the daemon is gone
    code = await trio.to_thread.run_sync(sim_cli.simulate, config, ["run", "--calls", "1"])
    assert code == 1
    assert "not reachable" in capsys.readouterr().err


async def test_serve_answers_what_the_daemon_places(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = init(tmp_path)
    async with running(config) as daemon:
        setup = sim_cli._setup(config, ["twilio"])
        async with trio.open_nursery() as nursery:
            scenario = Scenario(ring=0.05, talk=0.2)
            sim = await nursery.start(sim_cli._serve_async, setup, Audio.tone(), scenario, Tally())
            placed = await daemon.api.post("/v1/calls", json={"to": "+14155550199"})
            assert placed.status_code == 201
            await sim.call(placed.json()["provider_call_id"]).ended.wait()
            await trio.testing.wait_all_tasks_blocked()  # the line is printed
            nursery.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert "twilio call to +14155550199: completed (hung up by remote)" in out


def test_the_documented_command_line_reaches_the_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = init(tmp_path)
    code = cli.main(["simulate", "--provider", "twilio", "--calls", "1", "-c", str(path)])
    assert code == 1, "no daemon has run yet: the simulator itself says so"
    assert "voicecalld simulate: no API token" in capsys.readouterr().err


def test_until_then_the_run_command_word_reaches_the_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = init(tmp_path)
    code = cli.main(["simulate", "run", "--provider", "twilio", "--calls", "1", "-c", str(path)])
    assert code == 1
    assert "voicecalld simulate: no API token" in capsys.readouterr().err
