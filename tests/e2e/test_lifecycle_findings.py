"""Defects the faithful simulator found in the daemon, one test each, kept as regressions: each
states what an operator would expect. They were written to fail first (``xfail(strict=True)``)
and the marks went with the fixes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

from voicecalld.calls.model import Call, NewEvent, StoredEvent
from voicecalld.sim.scenario import Scenario, WebhookFaults
from voicecalld.testing import SimulatedDaemon, simulated

QUICK: Final = Scenario(ring=0.05, talk=0.4)
DEADLINE: Final = 20.0


@asynccontextmanager
async def lab(
    tmp_path: Path, document: Mapping[str, Any] | None = None, *, scenario: Scenario = QUICK
) -> AsyncIterator[SimulatedDaemon]:
    async with simulated(tmp_path, document, scenario=scenario) as daemon:
        yield daemon


async def events_of(lab: SimulatedDaemon, call_id: str) -> list[StoredEvent]:
    events = await lab.daemon.manager.store.events_after(0, 10_000)
    return [event for event in events if event.call.id == call_id]


async def test_twilio_speech_longer_than_the_stream_grace_keeps_the_call(tmp_path: Path) -> None:
    text = "Thank you for calling. Your order has shipped and will arrive on Tuesday."
    with trio.fail_after(DEADLINE):
        async with lab(tmp_path, scenario=attrs.evolve(QUICK, talk=None)) as it:
            placed, call = await it.place("twilio", "+14155550199")
            await call.streaming.wait()
            spoken = await it.daemon.api.post(
                f"/v1/calls/{placed['id']}/speak", json={"text": text}
            )
            assert spoken.status_code == 202
            with trio.move_on_after(0.3 + len(text) / 15 + 5.0):  # the speech, a new stream
                while len(call.legs) < 2 and not call.ended.is_set():
                    await trio.sleep(0.05)
            record = (await it.daemon.api.get(f"/v1/calls/{placed['id']}")).json()
            await it.daemon.api.post(f"/v1/calls/{placed['id']}/hangup")
    assert len(call.legs) == 2, "the stream came back after the speech"
    assert record["state"] != "ended", f"ended {record['end_reason']} while speaking"


async def test_a_telnyx_key_press_is_one_dtmf_event(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with lab(tmp_path, scenario=attrs.evolve(QUICK, dtmf="42")) as it:
            placed, _ = await it.place("telnyx", "+14155550199")
            await it.wait_ended(placed["id"])
            digits = [
                e.data["digit"] for e in await events_of(it, placed["id"]) if e.data.get("digit")
            ]
    assert digits == ["4", "2"]


async def test_a_redelivered_telnyx_event_is_applied_once(tmp_path: Path) -> None:
    scenario = attrs.evolve(QUICK, faults=WebhookFaults(duplicated=True))
    with trio.fail_after(DEADLINE):
        async with lab(tmp_path, scenario=scenario) as it:
            placed, call = await it.place("telnyx", "+14155550199")
            await it.wait_ended(placed["id"])
            await call.ended.wait()
    starts = [name for name, _ in call.call.actions if name == "streaming_start"]
    assert len(starts) == 1 and len(call.legs) == 1


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
async def test_a_webhook_racing_a_hangup_does_not_reopen_the_call(
    tmp_path: Path, carrier: str
) -> None:
    with trio.fail_after(DEADLINE):
        async with lab(tmp_path, scenario=attrs.evolve(QUICK, talk=None)) as it:
            placed, call = await it.place(carrier, "+14155550199")
            await call.streaming.wait()
            store = it.daemon.manager.store
            write = store.write
            ending = trio.Event()

            async def slow_disk(
                calls: Sequence[Call], events: Sequence[NewEvent] = (), key: str | None = None
            ) -> list[StoredEvent]:
                if any(c.ended for c in calls) and not ending.is_set():
                    ending.set()
                    await trio.sleep(0.3)  # the write of the call's end takes a while
                return await write(calls, events, key)

            store.write = slow_disk  # type: ignore[method-assign,assignment]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(it.daemon.api.post, f"/v1/calls/{placed['id']}/hangup")
                await ending.wait()
                call.hang_up()  # the far end hangs up at the same moment
            record = await it.wait_ended(placed["id"])
            await call.ended.wait()
            await it.daemon.manager.store.write([])  # everything before it is committed
            history = [e.type.value for e in await events_of(it, placed["id"])]
            stored = await it.daemon.manager.store.get(placed["id"])
    assert history.count("call.ended") == 1
    assert stored is not None and stored.end_reason is not None
    assert (record["end_reason"], stored.end_reason.value) == ("hangup-bot", "hangup-bot")
