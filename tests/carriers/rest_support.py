"""Shared pieces of the REST and composed-carrier tests: the fake carriers over real HTTP, calls,
and the official SDKs captured as oracles (their requests recorded, never sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import httpx
import orjson
import requests
from requests.adapters import BaseAdapter

from voicecalld.calls.model import Call, Direction, State
from voicecalld.carriers.urls import PublicUrls
from voicecalld.config import CallsConfig
from voicecalld.sim.rest import FakeCarriers, RecordedRequest, serve_fake_carriers

from .helpers import CALL_ID

T = TypeVar("T")
URLS = PublicUrls("https://voice.example.com/base")
CALLS = CallsConfig(ring_timeout=25.5, max_duration=600.0)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@asynccontextmanager
async def fake_carriers() -> AsyncIterator[tuple[FakeCarriers, httpx.AsyncClient]]:
    """The simulated carriers on 127.0.0.1, and a client configured like the registry's."""
    async with (
        serve_fake_carriers() as sim,
        httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(10.0)) as client,
    ):
        yield sim, client


def make_call(
    provider: str,
    provider_call_id: str | None,
    *,
    direction: Direction = Direction.OUTBOUND,
    answered: bool = False,
    metadata: dict[str, Any] | None = None,
    call_id: str = CALL_ID,
) -> Call:
    return Call(
        id=call_id,
        provider=provider,
        direction=direction,
        from_number="+14155550100",
        to="+14155550199",
        created_at=T0,
        updated_at=T0,
        provider_call_id=provider_call_id,
        state=State.ANSWERED if answered else State.INITIATED,
        answered_at=T0 if answered else None,
        metadata=metadata or {},
    )


def only(items: list[T]) -> T:
    assert len(items) == 1, items
    return items[0]


# -- the SDKs as oracles ---------------------------------------------------------------------------


@attrs.frozen
class Captured:
    """A request an SDK made, reduced to what the carrier sees of it."""

    method: str
    path: str
    query: str
    authorization: str
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class CapturingAdapter(BaseAdapter):
    """A ``requests`` transport (Twilio and Plivo SDKs) that records and answers, offline."""

    def __init__(self, status: int, answer: Any) -> None:
        super().__init__()
        self.status = status
        self.answer = answer
        self.captured: list[Captured] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = httpx.URL(str(request.url))
        body = request.body if isinstance(request.body, bytes | str) else b""
        self.captured.append(
            Captured(
                method=str(request.method),
                path=url.path,
                query=url.query.decode(),
                authorization=str(request.headers.get("Authorization", "")),
                body=body.encode() if isinstance(body, str) else body,
            )
        )
        response = requests.Response()
        response.status_code = self.status
        response._content = b"" if self.answer is None else orjson.dumps(self.answer)
        response.headers["Content-Type"] = "application/json"
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        return None


def capture_httpx(answer: Any, status: int = 200) -> tuple[httpx.Client, list[Captured]]:
    """An ``httpx.Client`` (Telnyx SDK) that records and answers, offline."""
    captured: list[Captured] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(
            Captured(
                method=request.method,
                path=request.url.path,
                query=request.url.query.decode(),
                authorization=request.headers.get("Authorization", ""),
                body=request.read(),
            )
        )
        return httpx.Response(status, json=answer)

    return httpx.Client(transport=httpx.MockTransport(handler)), captured


def ours(request: RecordedRequest) -> Captured:
    return Captured(
        method=request.method,
        path=request.path,
        query=request.query,
        authorization=request.headers.get("authorization", ""),
        body=request.body,
    )
