"""``/webhooks/{provider}`` end to end over HTTP (SPEC §4), signed by the carriers' own SDKs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.http.webhook_support import SID, Rig, inbound, raw_request, read_status, rig_for
from tests.support import wait_until
from voicecalld.sim.rest import serve_fake_carriers
from voicecalld.testing import free_port, make_config, running

PLIVO_UUID = "d0a87a1a-b0e9-4ab2-ac07-c22ee87cd04a"
TELNYX_ID = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with rig_for(tmp_path) as made:
        yield made


async def test_an_inbound_twiml_fetch_gets_a_stream_with_a_fresh_token(rig: Rig) -> None:
    response = await rig.twilio(inbound())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    body = response.text
    assert f'<Stream url="ws://127.0.0.1:{rig.port}/media/twilio">' in body
    assert '<Parameter name="token" value="' in body
    calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
    assert [(c["direction"], c["provider_call_id"], c["state"]) for c in calls] == [
        ("inbound", SID, "answered")
    ]


async def test_a_replay_is_harmless(rig: Rig) -> None:
    first = await rig.twilio(inbound())
    tokens = len(rig.daemon.manager._tokens)
    replay = await rig.twilio(inbound())
    assert replay.status_code == 200
    assert "<Stream" not in replay.text
    assert replay.text.replace(" ", "").endswith("<Response/>")
    assert len(rig.daemon.manager._tokens) == tokens, "a replay never mints a stream token"
    events = await rig.daemon.manager.store.events_after(0, 100)
    assert [e.type.value for e in events].count("call.created") == 1
    assert first.text != replay.text


async def test_a_replay_the_memory_forgot_is_still_a_replay(rig: Rig) -> None:
    await rig.twilio(inbound())
    rig.daemon.manager._replays.clear()  # as if 100,000 webhooks had passed since
    replay = await rig.twilio(inbound())
    assert replay.status_code == 200
    assert "<Stream" not in replay.text


async def test_forged_missing_and_oversized(rig: Rig) -> None:
    url = f"{rig.base}/webhooks/twilio"
    forged = await rig.daemon.api.post(url, data=inbound(), headers={"X-Twilio-Signature": "AAAA"})
    assert forged.status_code == 403
    tampered_signature = rig.twilio_signature(url, inbound())
    tampered = await rig.daemon.api.post(
        url, data=inbound(From="+19005550000"), headers={"X-Twilio-Signature": tampered_signature}
    )
    assert tampered.status_code == 403
    missing = await rig.daemon.api.post(url, data=inbound())
    assert missing.status_code == 401
    huge = await rig.daemon.api.post(
        url, content=b"x" * (64 * 1024 + 1), headers={"X-Twilio-Signature": "AAAA"}
    )
    assert huge.status_code == 413
    assert rig.daemon.manager.calls == {}


async def test_missing_signature_is_decided_before_the_body(rig: Rig) -> None:
    head = (
        "POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    )
    stream = await raw_request(rig.port, head)  # and never a byte of body
    with trio.fail_after(0.4):  # under body_timeout (0.5 s): not waiting for the body
        assert await read_status(stream) == 401
    await stream.aclose()


async def test_a_slow_body_is_a_408(rig: Rig) -> None:
    head = (
        "POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: AAAA\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    stream = await raw_request(rig.port, head, b"CallSid=")
    with trio.fail_after(5):
        assert await read_status(stream) == 408
    await stream.aclose()


async def test_a_ninth_webhook_in_flight_from_one_address_is_a_429(rig: Rig) -> None:
    head = (
        "POST /webhooks/twilio HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: AAAA\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    stuck = [await raw_request(rig.port, head, b"a=") for _ in range(8)]
    await trio.sleep(0.1)  # all eight are reading their bodies now
    ninth = await raw_request(rig.port, head, b"a=")
    with trio.fail_after(0.4):
        assert await read_status(ninth) == 429
    for stream in [*stuck, ninth]:
        await stream.aclose()


async def test_an_unknown_outbound_api_call_is_registered_not_rejected(rig: Rig) -> None:
    status = inbound(
        Direction="outbound-api", CallStatus="ringing", CallbackSource="call-progress-events"
    )
    response = await rig.twilio(status)
    assert response.status_code == 200
    twiml = await rig.twilio(inbound(Direction="outbound-api", CallStatus="in-progress"))
    assert "<Stream" in twiml.text
    calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
    assert [(c["direction"], c["state"]) for c in calls] == [("outbound-api", "answered")]


async def test_callbacks_for_a_call_we_placed_are_matched_by_our_id(rig: Rig) -> None:
    placed = (
        await rig.daemon.api.post("/v1/calls", json={"to": "+14155550199", "provider": "twilio"})
    ).json()
    sid = placed["provider_call_id"]
    # the carrier echoes our call id in the callback URL; it says outbound-api for any REST call
    params = inbound(CallSid=sid, Direction="outbound-api", CallStatus="in-progress")
    response = await rig.twilio(params, query=f"call={placed['id']}")
    assert "<Stream" in response.text
    calls = (await rig.daemon.api.get("/v1/calls")).json()["calls"]
    assert [(c["id"], c["direction"], c["state"]) for c in calls] == [
        (placed["id"], "outbound", "answered")
    ]


async def test_twilio_signing_without_the_port_is_accepted(rig: Rig) -> None:
    # public_url has a port; some Twilio set-ups sign the URL without it
    response = await rig.twilio(inbound(), signed_url="http://127.0.0.1/webhooks/twilio")
    assert response.status_code == 200


async def test_a_rejected_caller_is_rejected_once_and_recorded(tmp_path: Path) -> None:
    port = free_port()
    async with serve_fake_carriers() as sim:
        config = make_config(
            tmp_path,
            server={"port": port, "public_url": f"http://127.0.0.1:{port}"},
            calls={"inbound_policy": "allowlist", "allow_from": ["+14155550111"]},
            providers={"twilio": attrs.asdict(sim.twilio_config())},
        )
        async with running(config) as daemon:
            rig = Rig(daemon, sim, port)
            response = await rig.twilio(inbound())
            assert "<Reject" in response.text
            again = await rig.twilio(
                inbound(CallStatus="completed", CallbackSource="call-progress-events")
            )
            assert again.status_code == 200
            calls = (await daemon.api.get("/v1/calls")).json()["calls"]
            assert [(c["direction"], c["state"], c["metadata"].get("rejected")) for c in calls] == [
                ("inbound", "ended", "policy")
            ]
            assert daemon.manager.owed_hangups == 0, (
                "Twilio's <Reject/> is the hang-up: no REST call"
            )
            assert not [r for r in sim.requests if r.method != "GET"]


async def test_verified_but_malformed_is_a_400(rig: Rig) -> None:
    params = inbound()
    del params["CallSid"]
    response = await rig.twilio(params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed"


async def test_routing_errors(rig: Rig) -> None:
    assert (await rig.daemon.api.post(f"{rig.base}/webhooks/nope")).status_code == 404
    # RFC 9110 §15.5.6: a 405 MUST list the methods the target takes, in Allow
    for provider, method, allowed in [
        ("twilio", "GET", "POST"),
        ("telnyx", "GET", "POST"),
        ("twilio", "HEAD", "POST"),
        ("plivo", "PUT", "GET, POST"),
        ("twilio", "PUT", "POST"),
        ("telnyx", "DELETE", "POST"),
        ("twilio", "BREW", "POST"),
    ]:
        response = await rig.daemon.api.request(method, f"{rig.base}/webhooks/{provider}")
        assert (response.status_code, response.headers.get("allow")) == (405, allowed), provider
    # a method Plivo may use reaches the signature check
    assert (await rig.daemon.api.get(f"{rig.base}/webhooks/plivo")).status_code == 401


def plivo_answer(**extra: str) -> dict[str, str]:
    """A Plivo inbound answer_url request's fields (carriers.md §2.2)."""
    return {
        "CallUUID": PLIVO_UUID,
        "From": "14155550100",
        "To": "14155550199",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "Event": "StartApp",
        **extra,
    }


async def test_plivo_answer_is_signed_and_answered_with_a_stream(rig: Rig) -> None:
    response = await rig.plivo(plivo_answer())
    assert response.status_code == 200, response.text
    assert f">ws://127.0.0.1:{rig.port}/media/plivo</Stream>" in response.text
    call = (await rig.daemon.api.get("/v1/calls")).json()["calls"][0]
    assert (call["direction"], call["from"]) == ("inbound", "+14155550100")


def telnyx_event(event_type: str, **payload: str) -> bytes:
    """A Telnyx webhook envelope (carriers.md §3.2) for the call ``TELNYX_ID``."""
    return orjson.dumps(
        {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": "b3a2c6a1-5f1e-4c2e-9d0a-1f2e3d4c5b6a",
                "occurred_at": "2026-01-01T00:00:00.000000Z",
                "payload": {"call_control_id": TELNYX_ID, **payload},
            },
            "meta": {"attempt": 1},
        }
    )


async def test_telnyx_inbound_is_answered_through_rest(rig: Rig) -> None:
    body = telnyx_event(
        "call.initiated",
        call_leg_id="428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
        call_session_id="428c31b6-abf3-3bc1-b7f4-5013ef9657c1",
        connection_id="1684641123236054244",
        direction="incoming",
        state="parked",
        **{"from": "+14155550100", "to": "+14155550199"},
    )
    response = await rig.telnyx(body)
    assert response.status_code == 200
    assert response.content == b""
    assert (await rig.telnyx(body, timestamp=int(time.time()) - 301)).status_code == 403

    def answered() -> bool:
        return any(r.path.endswith("/actions/answer") for r in rig.sim.requests)

    await wait_until(answered)
    answer = next(r for r in rig.sim.requests if r.path.endswith("/actions/answer"))
    assert orjson.loads(answer.body)["stream_url"] == f"ws://127.0.0.1:{rig.port}/media/telnyx"


# -- verified junk, over HTTP, for every carrier ---------------------------------------------------


# The call id is there with a valid value about half the time, so the junk gets past parsing
# and reaches the manager too; every other field is random text or a value that means something.
def form_junk(
    call_field: str, call_id: str, names: list[str], meaningful: list[str]
) -> st.SearchStrategy[dict[str, str]]:
    values = st.text(max_size=40) | st.sampled_from(meaningful)
    return st.fixed_dictionaries(
        {call_field: st.just(call_id) | st.text(max_size=40)},
        optional=dict.fromkeys(names, values),
    )


twilio_junk = form_junk(
    "CallSid",
    SID,
    ["CallStatus", "Direction", "From", "To", "Digits", "AnsweredBy", "CallbackSource", "X"],
    [
        "ringing",
        "in-progress",
        "completed",
        "busy",
        "inbound",
        "outbound-api",
        "1#",
        "machine_start",
    ],
)
plivo_junk = form_junk(
    "CallUUID",
    PLIVO_UUID,
    ["RequestUUID", "CallStatus", "Event", "Direction", "Digits", "Machine", "From", "To", "X"],
    ["ringing", "in-progress", "completed", "inbound", "StartApp", "Hangup", "1#", "true"],
)
json_junk = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=30)
    | st.sampled_from(["incoming", "outgoing", "+14155550100", "1", "user_busy", "machine"])
)
telnyx_junk = st.builds(
    lambda event_type, payload: {"data": {"event_type": event_type, "payload": payload}},
    st.text(max_size=20)
    | st.sampled_from(
        ["call.initiated", "call.answered", "call.hangup", "call.dtmf.received", "call.bridged"]
    ),
    st.fixed_dictionaries(
        {"call_control_id": st.just(TELNYX_ID) | json_junk},
        optional=dict.fromkeys(
            ["direction", "from", "to", "digit", "hangup_cause", "client_state", "result", "X"],
            json_junk,
        ),
    ),
)


async def send_twilio(rig: Rig, case: dict[str, str]) -> int:
    return (await rig.twilio(case)).status_code


async def send_plivo(rig: Rig, case: dict[str, str]) -> int:
    return (await rig.plivo(case)).status_code


async def send_telnyx(rig: Rig, case: dict[str, object]) -> int:
    return (await rig.telnyx(orjson.dumps(case))).status_code


@pytest.mark.parametrize(
    ("junk", "send"),
    [(twilio_junk, send_twilio), (plivo_junk, send_plivo), (telnyx_junk, send_telnyx)],
    ids=["twilio", "plivo", "telnyx"],
)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_verified_junk_never_yields_a_5xx(
    tmp_path_factory: pytest.TempPathFactory,
    junk: st.SearchStrategy[Any],
    send: Callable[[Rig, Any], Awaitable[int]],
    data: st.DataObject,
) -> None:
    """Correctly signed webhooks with random fields: always 200 or 400, never a 5xx."""
    cases = data.draw(st.lists(junk, min_size=25, max_size=25))

    async def main() -> None:
        async with rig_for(tmp_path_factory.mktemp("junk")) as rig:
            for case in cases:
                assert await send(rig, case) in (200, 400), case

    trio.run(main)
