"""No phantom calls, end to end: place calls through a real ``voicecalld run``, ``kill -9`` it,
change what the carriers say, start it again, and each call ends up as the table in
``voicecalld/calls/reconcile.py`` says; the slots the old calls held take new calls.

The fake carriers (Twilio, Plivo, Telnyx REST on 127.0.0.1, port 0) run in this test's event
loop; the daemon is a subprocess pointed at them through ``api_base_url``.
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.e2e.support import api, daemon, daemon_config, kill_9, twilio_fetch, wait_for
from tests.support import wait_until
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import serve_fake_carriers
from voicecalld.sim.state import SimCall, SimStatus
from voicecalld.store.sqlite import SqliteStore
from voicecalld.testing import free_port

pytestmark = pytest.mark.slow

HANGUP_ACTIONS = {"status", "hangup", "cancel"}


def hung_up(sim_call: SimCall) -> bool:
    return any(name in HANGUP_ACTIONS for name, _ in sim_call.actions)


async def place(client: httpx.AsyncClient, provider: str, **fields: Any) -> dict[str, Any]:
    answer = await client.post(
        "/v1/calls", json={"to": "+14155550199", "provider": provider, **fields}
    )
    assert answer.status_code == 201, answer.text
    call: dict[str, Any] = answer.json()
    return call


async def backdate(state_dir: Path, call_id: str, seconds: float) -> None:
    """The daemon is dead: make one of its calls older, as if placed ``seconds`` earlier."""
    async with SqliteStore.open(state_dir) as store:
        call = await store.get(call_id)
        assert call is not None
        earlier = call.created_at - timedelta(seconds=seconds)
        await store.write([attrs.evolve(call, created_at=earlier, updated_at=earlier)])


def metric(text: str, outcome: str) -> float:
    found = re.search(rf'^voicecalld_reconcile_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_kill_9_then_restart_settles_every_call_and_frees_the_slots(tmp_path: Path) -> None:
    state_dir, port = tmp_path / "state", free_port()
    async with serve_fake_carriers() as sim, api(port) as client, trio.open_nursery() as nursery:
        # -- run 1: place the calls ------------------------------------------------------------
        first = daemon_config(tmp_path / "run1.toml", state_dir, port, sim)
        async with daemon(first, port) as process:
            calls = {
                name: await place(client, "twilio")
                for name in ("ringing", "streaming", "completed", "busy", "no-answer", "404")
            }
            calls["overdue"] = await place(client, "twilio")
            calls["notify"] = await place(client, "twilio", mode="notify", message="Hello")
            calls["owed hang-up"] = await place(client, "twilio")
            calls["plivo 500"] = await place(client, "plivo")
            calls["telnyx refused"] = await place(client, "telnyx")
            calls["mock"] = await place(client, "mock")
            sid = {name: call["provider_call_id"] for name, call in calls.items()}

            for name in ("streaming", "notify"):  # answered: Twilio fetches their TwiML
                path, form, signature = twilio_fetch(sim, calls[name]["id"], sid[name])
                answer = await client.post(
                    path, data=form, headers={"X-Twilio-Signature": signature}
                )
                assert answer.status_code == 200
                assert ("<Say" if name == "notify" else "<Stream") in answer.text

            sim.arm(Endpoint.TWILIO_UPDATE, Fault(status=500, times=None))
            hangup = await client.post(f"/v1/calls/{calls['owed hang-up']['id']}/hangup")
            assert hangup.json()["end_reason"] == "hangup-bot"
            await wait_until(lambda: len(sim.requests_to(Endpoint.TWILIO_UPDATE)) >= 3)

            # the dial of this one never returns: its record is durable, its carrier id unknown
            sim.arm(Endpoint.TWILIO_CREATE, Fault(delay=3600.0))
            creates = len(sim.requests_to(Endpoint.TWILIO_CREATE))
            nursery.start_soon(_place_and_forget, client, "twilio")
            await wait_until(lambda: len(sim.requests_to(Endpoint.TWILIO_CREATE)) > creates)
            await wait_for(lambda: _answered(client, calls["mock"]["id"]))  # after 2 s
            await kill_9(process)

        listed = await _all_calls(state_dir)
        lost = [c for c in listed if c.provider_call_id is None]
        assert len(lost) == 1 and not lost[0].ended
        calls["never reached the carrier"] = {"id": lost[0].id}

        # -- while it is down: the carriers move on -------------------------------------------
        sim.disarm()
        sim.set_status(sid["ringing"], SimStatus.RINGING)
        sim.set_status(sid["streaming"], SimStatus.IN_PROGRESS)
        sim.set_status(sid["notify"], SimStatus.IN_PROGRESS)
        sim.set_status(sid["completed"], SimStatus.COMPLETED)
        sim.set_status(sid["busy"], SimStatus.BUSY)
        sim.set_status(sid["no-answer"], SimStatus.NO_ANSWER)
        sim.set_status(sid["overdue"], SimStatus.RINGING)
        del sim.calls[sid["404"]]
        await backdate(state_dir, calls["overdue"]["id"], 400.0)  # max_duration is 300 s
        sim.arm(Endpoint.PLIVO_LIVE, Fault(status=500, times=None))
        open_after = 4  # ringing, notify, plivo 500, telnyx refused

        # -- run 2: restart with room for the survivors and two more calls -------------------
        second = daemon_config(
            tmp_path / "run2.toml",
            state_dir,
            port,
            sim,
            {
                "calls": {"max_concurrent": open_after + 2, "stream_grace": 1.0},
                "providers.telnyx": {"api_base_url": f"http://127.0.0.1:{free_port()}"},
            },
        )
        async with daemon(second, port) as process:
            expected = {
                "ringing": ("ringing", None),  # the carrier says so: restored ringing
                "notify": ("answered", None),
                "plivo 500": ("initiated", None),
                "telnyx refused": ("initiated", None),
                "streaming": ("ended", "stream-lost"),
                "completed": ("ended", "completed"),
                "busy": ("ended", "busy"),
                "no-answer": ("ended", "no-answer"),
                "404": ("ended", "completed"),
                "overdue": ("ended", "timeout"),
                "never reached the carrier": ("ended", "lost"),
                "owed hang-up": ("ended", "hangup-bot"),
                "mock": ("ended", "completed"),
            }

            async def states() -> dict[str, tuple[str, str | None]]:
                found = {}
                for name, call in calls.items():
                    now = (await client.get(f"/v1/calls/{call['id']}")).json()
                    found[name] = (now["state"], now["end_reason"])
                return found

            with trio.move_on_after(10.0):  # the stream grace is 1 s
                while await states() != expected:
                    await trio.sleep(0.05)
            assert await states() == expected, process.output()

            # hang-ups: the owed one carried across the restart, the overdue and stream-lost
            # ones; none for calls the carrier had ended
            owing = ("owed hang-up", "overdue", "streaming")
            await wait_until(lambda: all(hung_up(sim.call(sid[name])) for name in owing))
            owed = (await client.get(f"/v1/calls/{calls['owed hang-up']['id']}")).json()
            assert "hangup_owed" not in owed["metadata"]
            for name in ("completed", "busy", "no-answer", "ringing", "notify"):
                assert not hung_up(sim.call(sid[name])), name

            # the old calls hold only the slots of the calls still live
            for _ in range(2):
                await place(client, "mock")
            refused = await client.post("/v1/calls", json={"to": "+14155550199"})
            assert refused.status_code == 429

            text = (await client.get("/metrics")).text
            assert metric(text, "lost") == 1
            assert metric(text, "timeout") == 1
            assert metric(text, "ended") == 5  # completed, busy, no-answer, 404, mock
            assert metric(text, "restored") == 3  # ringing, streaming, notify
            assert metric(text, "retry") >= 2  # plivo 500, telnyx refused

            sim.disarm()  # Plivo answers again: its call is asked again, and restored

            async def plivo_restored() -> bool:
                return metric((await client.get("/metrics")).text, "restored") == 4

            await wait_for(plivo_restored)
        nursery.cancel_scope.cancel()


async def _place_and_forget(client: httpx.AsyncClient, provider: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the daemon is killed while dialing
        await client.post("/v1/calls", json={"to": "+14155550199", "provider": provider})


async def _answered(client: httpx.AsyncClient, call_id: str) -> bool:
    state: str = (await client.get(f"/v1/calls/{call_id}")).json()["state"]
    return state == "answered"


async def _all_calls(state_dir: Path) -> list[Any]:
    async with SqliteStore.open(state_dir) as store:
        page, _ = await store.list_calls(active=None, limit=100, cursor=None)
        return page
