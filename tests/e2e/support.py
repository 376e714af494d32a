"""Helpers of the end-to-end tests: a ``voicecalld run`` subprocess driven from trio, with the
fake carriers served in the test's own event loop (so every wait here must yield to it)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from twilio.request_validator import RequestValidator

from tests.support import Process
from voicecalld.sim.rest import FakeCarriers

PUBLIC_URL = "https://voice.example.com"
"""Carriers would call here; no webhook is sent by the simulator in these tests, so any https
URL does, and the tests sign their own webhooks against it."""
TOKEN = "test-token"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def daemon_config(
    path: Path,
    state_dir: Path,
    port: int,
    sim: FakeCarriers,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Every carrier enabled and pointed at ``sim``; ``overrides`` replace keys of tables."""
    twilio, plivo, telnyx = sim.twilio_config(), sim.plivo_config(), sim.telnyx_config()
    tables: dict[str, dict[str, Any]] = {
        "server": {"bind": "127.0.0.1", "port": port, "public_url": PUBLIC_URL},
        "store": {"state_dir": str(state_dir)},
        "api": {"token": TOKEN},
        "log": {"level": "info"},
        "runtime": {"drain_timeout": 1.0},
        "calls": {"max_concurrent": 50, "ring_timeout": 600.0, "max_duration": 300.0},
        "providers.twilio": {
            "enabled": True,
            "account_sid": twilio.account_sid,
            "auth_token": twilio.auth_token,
            "api_base_url": twilio.api_base_url,
        },
        "providers.plivo": {
            "enabled": True,
            "auth_id": plivo.auth_id,
            "auth_token": plivo.auth_token,
            "api_base_url": plivo.api_base_url,
        },
        "providers.telnyx": {
            "enabled": True,
            "api_key": telnyx.api_key,
            "public_key": telnyx.public_key,
            "connection_id": telnyx.connection_id,
            "api_base_url": telnyx.api_base_url,
        },
    }
    for table, keys in (overrides or {}).items():
        tables.setdefault(table, {}).update(keys)
    return write_config(path, tables)


@asynccontextmanager
async def daemon(config: Path, port: int) -> AsyncIterator[Process]:
    """``voicecalld run`` until the block ends (then killed if still running), ready."""
    process = Process(config)
    try:
        await trio.to_thread.run_sync(process.wait_ready, port, 30.0)
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)


async def kill_9(process: Process) -> None:
    process.signal(signal.SIGKILL)
    code = await trio.to_thread.run_sync(process.wait)
    assert code == -signal.SIGKILL


def api(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30.0,
    )


def twilio_fetch(sim: FakeCarriers, call_id: str, sid: str) -> tuple[str, dict[str, str], str]:
    """A signed Twilio TwiML fetch for an answered outbound call: (path, form, signature)."""
    path = f"/webhooks/twilio?call={call_id}"
    form = {
        "AccountSid": sim.accounts.twilio_account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
        "From": "+15550000000",
        "To": "+14155550199",
    }
    signature = RequestValidator(sim.accounts.twilio_auth_token).compute_signature(
        PUBLIC_URL + path, form
    )
    return path, form, str(signature)


async def wait_for(predicate: Any, timeout: float = 15.0, every: float = 0.05) -> None:
    """Poll an async ``predicate()`` until true (real time: the daemon is another process)."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(every)
