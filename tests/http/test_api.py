"""The control API over real HTTP against a daemon on port 0 (SPEC §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tests.support import wait_until
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import serve_fake_carriers
from voicecalld.testing import make_config, running


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Mock-carrier timers jump ahead once every task has idled 50 ms (real I/O gets real time)."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def place(daemon: Any, **body: Any) -> dict[str, Any]:
    response = await daemon.api.post("/v1/calls", json={"to": "+15551234567", **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "end_reason", "lasted"),
    [
        # the mock speaks the message, then the call completes
        ({"mode": "notify", "message": "Your table is ready"}, "completed", (4.0, 6.0)),
        # a message alone means notify: it is spoken, never silently dropped
        ({"message": "Your table is ready"}, "completed", (4.0, 6.0)),
        # `voicecalld call +15551234567` as the README shows it: the callee talks, hangs up
        ({}, "hangup-user", (22.0, 23.0)),
    ],
)
async def test_a_placed_call_runs_its_whole_lifecycle(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    body: dict[str, str],
    end_reason: str,
    lasted: tuple[float, float],
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        call = await place(daemon, **body)
        placed_at = trio.current_time()
        assert call["state"] == "initiated"
        assert call["direction"] == "outbound"
        assert call["provider"] == "mock"
        assert call["provider_call_id"].startswith("MK")
        assert call["from"] == "+15550000000"
        assert call["created_at"].endswith("Z")

        async def state() -> dict[str, Any]:
            return (await daemon.api.get(f"/v1/calls/{call['id']}")).json()  # type: ignore[no-any-return]

        with trio.fail_after(60):
            while (current := await state())["state"] != "ended":
                await trio.sleep(0.5)
        assert current["end_reason"] == end_reason
        assert current["answered_at"] is not None
        assert current["ended_at"] is not None
        # virtual time: the record's stamps are wall-clock, the mock's timers trio's
        assert lasted[0] <= trio.current_time() - placed_at <= lasted[1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "to: required"),
        ({"to": "5551234567"}, "to: expected an E.164 number"),
        ({"to": "+1555", "from": "+1"}, "from: expected an E.164 number"),
        ({"to": "+15551234567\n"}, "to: expected an E.164 number"),  # `$` let it by
        ({"to": "+15551234567", "from": "+15550000000\n"}, "from: expected an E.164 number"),
        ({"to": "+15551234567", "colour": "red"}, "colour: unknown field"),
        ({"to": "+15551234567", "mode": "shout"}, "mode: expected notify or conversation"),
        ({"to": "+15551234567", "mode": "notify"}, "message: required in notify mode"),
        (
            {"to": "+15551234567", "mode": "conversation", "message": "hi"},
            "message: only spoken in notify mode",
        ),
        ({"to": "+15551234567", "bridge_url": "http://app"}, "bridge_url: expected a ws://"),
        ({"to": "+15551234567", "provider": "twilio"}, "provider: twilio is not enabled"),
        ({"to": 15551234567}, "to: expected a string"),
    ],
)
async def test_bad_requests_name_the_field(
    tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        response = await daemon.api.post("/v1/calls", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "bad_request"
        assert message in error["message"]


async def test_bad_json_is_a_400(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon:
        response = await daemon.api.post(
            "/v1/calls", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "body: not valid JSON"
        response = await daemon.api.post("/v1/calls", content=b"[1, 2]")
        assert response.status_code == 400


async def test_capacity_is_reserved_and_freed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path, calls={"max_concurrent": 1})) as daemon:
        first = await place(daemon)
        refused = await daemon.api.post("/v1/calls", json={"to": "+15551234568"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "capacity"
        assert (await daemon.api.post(f"/v1/calls/{first['id']}/hangup")).status_code == 200
        await place(daemon)  # the slot is free again


async def test_a_dial_the_carrier_refuses_ends_failed_and_frees_the_slot(tmp_path: Path) -> None:
    async with serve_fake_carriers() as sim:
        twilio = attrs.asdict(sim.twilio_config())
        config = make_config(
            tmp_path,
            server={"public_url": "https://voice.example.com"},
            providers={"twilio": twilio},
            calls={"max_concurrent": 1, "default_provider": "twilio"},
        )
        sim.arm(Endpoint.TWILIO_CREATE, Fault(status=400))
        async with running(config) as daemon:
            response = await daemon.api.post("/v1/calls", json={"to": "+15551234567"})
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "carrier_failed"
            listing = (await daemon.api.get("/v1/calls")).json()["calls"]
            assert [(c["state"], c["end_reason"]) for c in listing] == [("ended", "failed")]
            assert daemon.manager.calls == {}
            sim.disarm()
            await place(daemon, provider="twilio")


async def test_a_dial_answered_with_a_stored_calls_carrier_id_is_a_502_not_a_500(
    tmp_path: Path,
) -> None:
    """A carrier (or a stub) that answers a dial with the id of a call the store keeps, ended
    and forgotten by memory (a restart later): it used to be a 500, with the call left open,
    its slot taken, and every hang-up a 500 too."""
    config = make_config(tmp_path, calls={"max_concurrent": 1})
    async with running(config) as daemon:
        old = (await daemon.api.post("/v1/calls", json={"to": "+15551234567"})).json()
        await daemon.api.post(f"/v1/calls/{old['id']}/hangup")
    async with running(config) as daemon:
        mock = daemon.manager.carriers.get("mock")
        assert mock is not None

        async def place_with_an_old_id(call: Any) -> str:
            return str(old["provider_call_id"])

        mock.place = place_with_an_old_id  # type: ignore[method-assign]
        refused = await daemon.api.post("/v1/calls", json={"to": "+15557654321"})
        assert refused.status_code == 502
        assert "already an ended call's" in refused.json()["error"]["message"]
        listing = (await daemon.api.get("/v1/calls")).json()["calls"]
        newest = listing[0]
        assert (newest["state"], newest["end_reason"], newest["provider_call_id"]) == (
            "ended",
            "failed",
            None,
        )
        assert daemon.manager.calls == {}, "the slot is free again"
        again = await daemon.api.post(f"/v1/calls/{newest['id']}/hangup")
        assert again.status_code == 200
        kept = (await daemon.api.get(f"/v1/calls/{old['id']}")).json()
        assert (kept["provider_call_id"], kept["end_reason"]) == (
            old["provider_call_id"],
            "hangup-bot",
        )


async def test_hangup_is_idempotent_and_ends_hangup_bot(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(make_config(tmp_path)) as daemon:
        call = await place(daemon)
        first = await daemon.api.post(f"/v1/calls/{call['id']}/hangup")
        assert first.status_code == 200
        assert (first.json()["state"], first.json()["end_reason"]) == ("ended", "hangup-bot")
        again = await daemon.api.post(f"/v1/calls/{call['id']}/hangup")
        assert again.status_code == 200
        # the same ended call (its metadata loses "hangup_owed" once the carrier confirms)
        drop = {"metadata", "updated_at"}
        assert {k: v for k, v in again.json().items() if k not in drop} == {
            k: v for k, v in first.json().items() if k not in drop
        }
        missing = await daemon.api.post("/v1/calls/c_nope/hangup")
        assert missing.status_code == 404
        assert (await daemon.api.get("/v1/calls/c_nope")).status_code == 404


async def test_speak_and_dtmf(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running(make_config(tmp_path)) as daemon:
        call = await place(daemon)
        for action, body in (("speak", {"text": "Hello"}), ("dtmf", {"digits": "1"})):
            # nobody there yet: the mock would have pretended to answer, real carriers refuse
            early = await daemon.api.post(f"/v1/calls/{call['id']}/{action}", json=body)
            assert (early.status_code, early.json()["error"]["code"]) == (409, "not_answered")
        assert daemon.manager.calls[call["id"]].answered_at is None
        await wait_until(
            lambda: daemon.manager.calls[call["id"]].answered_at is not None, timeout=30, every=0.5
        )
        spoken = await daemon.api.post(f"/v1/calls/{call['id']}/speak", json={"text": "Hello"})
        assert spoken.status_code == 202
        assert spoken.json()["state"] == "speaking"
        await wait_until(
            lambda: daemon.manager.calls[call["id"]].state.value == "listening", every=0.5
        )
        assert (
            await daemon.api.post(f"/v1/calls/{call['id']}/dtmf", json={"digits": "12#"})
        ).status_code == 202
        for digits in ("12x", "12\n"):
            bad = await daemon.api.post(f"/v1/calls/{call['id']}/dtmf", json={"digits": digits})
            assert bad.status_code == 400, digits
            assert "digits:" in bad.json()["error"]["message"]
        assert (await daemon.api.post(f"/v1/calls/{call['id']}/speak", json={})).status_code == 400
        await daemon.api.post(f"/v1/calls/{call['id']}/hangup")
        ended = await daemon.api.post(f"/v1/calls/{call['id']}/speak", json={"text": "Hello?"})
        assert ended.status_code == 409
        assert ended.json()["error"]["code"] == "call_ended"


@pytest.mark.parametrize("limit", ["0", "501", "x", "\u00b2", "\u0664", "\uff11"])
async def test_a_bad_limit_is_a_400_whatever_its_digits(tmp_path: Path, limit: str) -> None:
    # superscript two, Arabic-Indic four and fullwidth one are digits to str.isdigit(): the
    # first crashed int() (a 500), the others were taken as numbers
    async with running(make_config(tmp_path)) as daemon:
        response = await daemon.api.get("/v1/calls", params={"limit": limit})
        assert response.status_code == 400
        assert "limit: expected an integer" in response.json()["error"]["message"]


async def test_listing_pages_and_filters(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running(make_config(tmp_path, calls={"max_concurrent": 10})) as daemon:
        placed = [await place(daemon, to=f"+1555123450{i}") for i in range(5)]
        for call in placed[:2]:
            await daemon.api.post(f"/v1/calls/{call['id']}/hangup")
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await daemon.api.get("/v1/calls", params=params)).json()
            seen += [c["id"] for c in page["calls"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(c["id"] for c in placed)
        assert len(seen) == 5
        active = (await daemon.api.get("/v1/calls", params={"state": "active"})).json()["calls"]
        assert {c["id"] for c in active} == {c["id"] for c in placed[2:]}
        ended = (await daemon.api.get("/v1/calls", params={"state": "ended"})).json()["calls"]
        assert {c["id"] for c in ended} == {c["id"] for c in placed[:2]}
        assert (await daemon.api.get("/v1/calls", params={"state": "gone"})).status_code == 400
        assert (await daemon.api.get("/v1/calls", params={"limit": "0"})).status_code == 400
        assert (await daemon.api.get("/v1/calls", params={"cursor": "!!"})).status_code == 400
