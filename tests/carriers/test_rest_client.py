"""The shared REST machinery: only api_base_url, no redirects, deadlines, safe bounded retries,
and no credentials in errors or logs. Against the fake carriers over real HTTP, or an
``httpx.MockTransport`` where the failure cannot be made by a server (a refused connection)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.carriers.base import CarrierError
from voicecalld.carriers.rest import (
    MAX_BODY,
    RestClient,
    RetryPolicy,
    basic_authorization,
    bearer_authorization,
)
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.rest import FakeCarriers

from .rest_support import fake_carriers

TOKEN = "s3cr3t-auth-token/+="


def sim_client(sim: FakeCarriers, client: httpx.AsyncClient, **options: object) -> RestClient:
    """A RestClient for the simulated Twilio account (its Calls resource is a handy target)."""
    accounts = sim.accounts
    return RestClient(
        "twilio",
        client,
        sim.base_url,
        authorization=basic_authorization(accounts.twilio_account_sid, accounts.twilio_auth_token),
        secrets=[accounts.twilio_auth_token],
        **options,  # type: ignore[arg-type]
    )


def calls_path(sim: FakeCarriers) -> str:
    return f"/2010-04-01/Accounts/{sim.accounts.twilio_account_sid}/Calls.json"


def fetch_path(sim: FakeCarriers, sid: str = "CA" + "0" * 32) -> str:
    return f"/2010-04-01/Accounts/{sim.accounts.twilio_account_sid}/Calls/{sid}.json"


CREATE_FORM = [("To", "+14155550199"), ("From", "+14155550100"), ("Url", "https://x.test/")]


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=False)


# -- only api_base_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "https://evil.example/x",
        "//evil.example/x",
        "evil.example/x",
        "",
        "/v2/calls/../../x",
        "/v2/calls/./x",
        "/v2/calls?x=1",
        "/v2/calls#frag",
        "/v2/calls/a b",
        "/v2/calls/%2e%2e/x",
        "/v2//calls",
        "/v2/calls/\nHost: evil",
        "@evil.example/x",
    ],
)
async def test_paths_that_could_leave_the_base_url_are_refused_unsent(path: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    async with mock_client(handler) as client:
        rest = RestClient("telnyx", client, "https://api.telnyx.com", authorization="x", secrets=[])
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", path, idempotent=True)
    assert raised.value.retryable is False
    assert sent == []


async def test_the_base_url_path_prefix_is_kept_and_its_userinfo_never_sent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": True})

    async with mock_client(handler) as client:
        rest = RestClient(
            "telnyx",
            client,
            "https://user:hunter22@carrier.test/prefix/",
            authorization=bearer_authorization("KEY1"),
            secrets=["KEY1"],
        )
        answer = await rest.request("GET", "/v2/calls/v3:abc", idempotent=True)
    assert answer.data == {"ok": True}
    (request,) = sent
    assert str(request.url) == "https://carrier.test/prefix/v2/calls/v3:abc"
    assert request.headers["authorization"] == "Bearer KEY1"


# -- redirects ----------------------------------------------------------------------------------


async def test_a_redirect_is_an_error_and_never_followed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        elsewhere = Fault(redirect="http://other-host.invalid/steal", times=None)
        sim.arm(Endpoint.TWILIO_FETCH, elsewhere)
        with pytest.raises(CarrierError) as raised:
            await sim_client(sim, client).request("GET", fetch_path(sim), idempotent=True)
    assert raised.value.status == 302
    assert raised.value.retryable is False
    assert "redirect" in str(raised.value)
    assert len(sim.requests) == 1  # not retried, not followed


async def test_a_redirect_is_not_followed_even_by_a_client_that_would() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(307, headers={"location": "https://elsewhere.test/x"})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        rest = RestClient("twilio", client, "https://api.twilio.com", authorization="A", secrets=[])
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", "/2010-04-01/x.json", idempotent=True)
    assert raised.value.status == 307
    assert hosts == ["api.twilio.com"]


# -- retries ------------------------------------------------------------------------------------


async def test_an_idempotent_request_is_retried_on_5xx_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        sid = sim.add_call("twilio", from_number="+1", to="+2").carrier_id
        sim.arm(Endpoint.TWILIO_FETCH, Fault(status=503, times=2))
        start = trio.current_time()
        answer = await sim_client(sim, client).request("GET", fetch_path(sim, sid), idempotent=True)
        waited = trio.current_time() - start
    assert answer.data["sid"] == sid
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 3
    # two backoffs of the default policy: 0.25..0.5 s, then 0.5..1 s
    assert 0.75 <= waited <= 1.5 + 0.01


async def test_retries_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_FETCH, Fault(status=500, times=None))
        rest = sim_client(sim, client, retry=RetryPolicy(attempts=4))
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", fetch_path(sim), idempotent=True)
    assert raised.value.retryable is True
    assert raised.value.status == 500
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 4


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_retryable_statuses(status: int, autojump_clock: trio.testing.MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_FETCH, Fault(status=status, times=None))
        with pytest.raises(CarrierError) as raised:
            await sim_client(sim, client).request("GET", fetch_path(sim), idempotent=True)
    assert (raised.value.retryable, raised.value.status) == (True, status)
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_a_refusal_is_final(status: int, autojump_clock: trio.testing.MockClock) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_FETCH, Fault(status=status))
        with pytest.raises(CarrierError) as raised:
            await sim_client(sim, client).request("GET", fetch_path(sim), idempotent=True)
    assert (raised.value.retryable, raised.value.status) == (False, status)
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 1


async def test_an_expected_status_is_an_answer_not_an_error() -> None:
    async with fake_carriers() as (sim, client):
        answer = await sim_client(sim, client).request(
            "GET", fetch_path(sim), idempotent=True, expect=(404,)
        )
    assert answer.status == 404
    assert answer.error_code == "20404"


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=503, after=True),
        Fault(status=500),
        Fault(drop=True, after=True),
        Fault(drop=True),
        Fault(delay=60.0, after=True),
    ],
    ids=["503-after", "500", "drop-after", "drop", "timeout"],
)
async def test_a_create_is_never_retried_after_an_ambiguous_failure(
    fault: Fault, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_CREATE, fault)
        with pytest.raises(CarrierError) as raised:
            await sim_client(sim, client).request(
                "POST", calls_path(sim), form=CREATE_FORM, idempotent=False
            )
    assert raised.value.retryable is True  # the manager may decide; this client did not retry
    assert len(sim.requests_to(Endpoint.TWILIO_CREATE)) == 1
    assert len(sim.calls) == (1 if fault.after else 0)


async def test_a_dropped_connection_is_retried_when_idempotent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        sid = sim.add_call("twilio", from_number="+1", to="+2").carrier_id
        sim.arm(Endpoint.TWILIO_FETCH, Fault(drop=True))
        answer = await sim_client(sim, client).request("GET", fetch_path(sim, sid), idempotent=True)
    assert answer.status == 200
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 2


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("x")]
)
async def test_a_request_that_never_left_is_retried_even_when_not_idempotent(
    error: Exception, autojump_clock: trio.testing.MockClock
) -> None:
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        if len(attempts) == 1:
            raise error
        return httpx.Response(201, json={"sid": "CA" + "1" * 32})

    async with mock_client(handler) as client:
        rest = RestClient("twilio", client, "https://api.twilio.com", authorization="A", secrets=[])
        answer = await rest.request("POST", "/2010-04-01/Calls.json", form=[], idempotent=False)
    assert answer.status == 201
    assert len(attempts) == 2


async def test_an_unreachable_carrier_is_a_retryable_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.socket.socket() as probe:  # a port that nothing listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient() as client:
        rest = RestClient(
            "twilio", client, f"http://127.0.0.1:{port}", authorization="A", secrets=[]
        )
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", "/2010-04-01/x.json", idempotent=True)
    assert raised.value.retryable is True
    assert "ConnectError" in str(raised.value)


# -- deadlines ----------------------------------------------------------------------------------


async def test_every_attempt_has_a_deadline(autojump_clock: trio.testing.MockClock) -> None:
    sim = FakeCarriers()
    sim.arm(Endpoint.TWILIO_FETCH, Fault(delay=3600.0, times=None))
    transport = httpx.ASGITransport(app=sim)  # no real socket: the deadline alone must fire
    async with httpx.AsyncClient(transport=transport) as client:
        rest = sim_client(sim, client, timeout=2.0)
        start = trio.current_time()
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", fetch_path(sim), idempotent=True)
        waited = trio.current_time() - start
    assert raised.value.retryable is True
    assert "no answer within 2 s" in str(raised.value)
    assert len(sim.requests_to(Endpoint.TWILIO_FETCH)) == 3
    assert 3 * 2.0 + 0.75 <= waited <= 3 * 2.0 + 1.5 + 0.01


async def test_a_slow_answer_over_real_http_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        sim.arm(Endpoint.TWILIO_FETCH, Fault(delay=30.0))
        rest = sim_client(sim, client, timeout=5.0, retry=RetryPolicy(attempts=1))
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", fetch_path(sim), idempotent=True)
    assert raised.value.retryable is True


# -- bodies -------------------------------------------------------------------------------------


async def test_an_oversized_answer_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * (MAX_BODY + 1))

    async with mock_client(handler) as client:
        rest = RestClient("plivo", client, "https://api.plivo.com", authorization="A", secrets=[])
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", "/v1/Account/MA1/Call/", idempotent=True)
    assert raised.value.retryable is False
    assert "larger than" in str(raised.value)


async def test_an_oversized_answer_over_real_http_is_cut_off() -> None:
    # Stopping early leaves httpx's and httpcore's stream generators unexhausted; Trio warns
    # when they are collected (encode/httpx#3686), which pyproject's filterwarnings lets by.
    hung_up = trio.Event()

    async def answer(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {8 * MAX_BODY}\r\n\r\n".encode()
        try:
            await stream.send_all(head + b"x" * (2 * MAX_BODY))
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass  # reset: the client closed with our bytes unread
        hung_up.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, answer, 0)
        port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as client:
            rest = RestClient(
                "plivo", client, f"http://127.0.0.1:{port}", authorization="A", secrets=[]
            )
            with pytest.raises(CarrierError) as raised:
                await rest.request("GET", "/v1/Account/MA1/Call/", idempotent=True)
        with trio.fail_after(10):
            await hung_up.wait()  # the rest of the body is not read: the connection is dropped
        nursery.cancel_scope.cancel()
    assert raised.value.retryable is False
    assert "larger than" in str(raised.value)


async def test_bodies_are_encoded_as_the_carriers_expect() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with mock_client(handler) as client:
        rest = RestClient("x", client, "https://c.test", authorization="A", secrets=[])
        form = [("StatusCallbackEvent", "initiated"), ("StatusCallbackEvent", "ringing")]
        await rest.request("POST", "/form", form=form, idempotent=True)
        await rest.request("POST", "/json", json={"to": "+1", "n": 3}, idempotent=True)
        answer = await rest.request("GET", "/q", params={"status": "live"}, idempotent=True)
    assert answer.data is None
    assert seen[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen[0].content == b"StatusCallbackEvent=initiated&StatusCallbackEvent=ringing"
    assert seen[1].headers["content-type"] == "application/json"
    assert seen[1].content == b'{"to":"+1","n":3}'
    assert seen[2].url.query == b"status=live"


# -- credentials --------------------------------------------------------------------------------


async def test_credentials_never_reach_error_text_or_logs(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """A carrier (or a proxy) that echoes the request's credentials back in its error."""
    credential = base64.b64encode(f"AC1:{TOKEN}".encode()).decode()

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = f"bad {request.headers['authorization']} {TOKEN} {credential}"
        return httpx.Response(503, json={"code": 1, "message": echoed})

    caplog.set_level(logging.DEBUG)
    async with mock_client(handler) as client:
        rest = RestClient(
            "twilio",
            client,
            f"https://AC1:{TOKEN.replace('/', '%2F')}@api.twilio.com",
            authorization=basic_authorization("AC1", TOKEN),
            secrets=[TOKEN],
        )
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", "/2010-04-01/x.json", idempotent=True)
    texts = [str(raised.value), caplog.text, *(str(r.__dict__) for r in caplog.records)]
    for text in texts:
        assert TOKEN not in text
        assert credential not in text
        assert "s3cr3t" not in text
    assert "***" in str(raised.value)
    assert any("retrying" in record.getMessage() for record in caplog.records)


async def test_refused_credentials_are_named_without_being_shown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_carriers() as (sim, client):
        rest = RestClient(
            "twilio",
            client,
            sim.base_url,
            authorization=basic_authorization(sim.accounts.twilio_account_sid, TOKEN),
            secrets=[TOKEN],
        )
        with pytest.raises(CarrierError) as raised:
            await rest.request("GET", fetch_path(sim), idempotent=True)
    assert raised.value.status == 401
    assert raised.value.retryable is False
    assert "refused the credentials" in str(raised.value)
    assert TOKEN not in str(raised.value)


# -- backoff ------------------------------------------------------------------------------------


@given(
    failed=st.integers(1, 30),
    first=st.floats(0.01, 10.0),
    cap=st.floats(0.01, 60.0),
)
def test_backoff_doubles_is_capped_and_keeps_half(failed: int, first: float, cap: float) -> None:
    policy = RetryPolicy(attempts=5, first_delay=first, max_delay=cap)
    backoff = min(cap, first * 2.0 ** (failed - 1))
    delay = policy.delay(failed)
    assert backoff / 2 <= delay <= backoff
