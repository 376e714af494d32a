"""Plivo's REST API as voicecalld uses it: place, hang up, cancel, look up, speak, send DTMF.

The requests are the official SDK's (plivo 4.63, ``plivo/resources/calls.py``): paths under
``/v1/Account/{auth_id}/``, every path ending in ``/``, JSON bodies, HTTP Basic with
``auth_id:auth_token``. Every CallUUID and RequestUUID is checked (a UUID) before it enters a
path, and the Auth ID too; anything else is a non-retryable :class:`CarrierError` and nothing is
sent. The SDK also repeats the call UUID in the body of hang-up, speak and DTMF requests; so do
we.

Plivo answers 404 for "not here": for a hang-up or a cancel the call (or request) is gone; for a
lookup the meaning depends on the endpoint (see :mod:`.carrier`). These methods return
``None``/``False`` for a 404 and leave the meaning to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import httpx

from voicecalld.carriers.base import CarrierError
from voicecalld.carriers.plivo.wire import is_call_id
from voicecalld.carriers.rest import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    RestClient,
    RetryPolicy,
    basic_authorization,
)
from voicecalld.config import PlivoConfig

__all__ = ["PlivoRest"]

_AUTH_ID: Final = re.compile(r"[A-Za-z0-9]{1,64}")


class PlivoRest:
    """The Call and Request resources of one Plivo account, at ``api_base_url``."""

    def __init__(
        self,
        config: PlivoConfig,
        client: httpx.AsyncClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._auth_id = config.auth_id
        self._rest = RestClient(
            "plivo",
            client,
            config.api_base_url,
            authorization=basic_authorization(config.auth_id, config.auth_token),
            secrets=[config.auth_token],
            timeout=timeout,
            retry=retry,
        )

    async def create_call(self, body: Mapping[str, object]) -> str:
        """``POST Call/``: the *request* UUID (the CallUUID comes later, in webhooks). Never
        retried once sent (a second create would place a second call)."""
        path = self._path("Call")
        response = await self._rest.request("POST", path, json=body, idempotent=False)
        data = response.data if isinstance(response.data, dict) else {}
        request_uuid = data.get("request_uuid")
        if isinstance(request_uuid, list) and len(request_uuid) == 1:
            request_uuid = request_uuid[0]  # one destination, in the bulk answer's shape
        if not isinstance(request_uuid, str) or not is_call_id(request_uuid):
            raise CarrierError(
                f"plivo POST {path}: answered without a request_uuid", retryable=False
            )
        return request_uuid

    async def hangup_call(self, call_uuid: str) -> bool:
        """``DELETE Call/{uuid}/``: true if hung up, false if Plivo has no such live call."""
        path = self._path("Call", call_uuid)
        response = await self._rest.request(
            "DELETE", path, json={"call_uuid": call_uuid}, idempotent=True, expect=(404,)
        )
        return response.status != 404

    async def cancel_request(self, request_uuid: str) -> bool:
        """``DELETE Request/{uuid}/``: true if canceled, false if no such queued or ringing call."""
        path = self._path("Request", request_uuid)
        response = await self._rest.request("DELETE", path, idempotent=True, expect=(404,))
        return response.status != 404

    async def live_call(self, call_uuid: str) -> Mapping[str, Any] | None:
        """``GET Call/{uuid}/?status=live``: the live call, or ``None`` (404: not live now)."""
        return await self._get(self._path("Call", call_uuid), {"status": "live"})

    async def queued_call(self, request_uuid: str) -> Mapping[str, Any] | None:
        """``GET Call/{uuid}/?status=queued``: the queued call, or ``None`` (404: not queued)."""
        return await self._get(self._path("Call", request_uuid), {"status": "queued"})

    async def call_record(self, call_uuid: str) -> Mapping[str, Any] | None:
        """``GET Call/{uuid}/``: the call detail record, or ``None`` (404: none, or none yet)."""
        return await self._get(self._path("Call", call_uuid), None)

    async def speak(self, call_uuid: str, body: Mapping[str, object]) -> bool:
        """``POST Call/{uuid}/Speak/``: false when the call is not live. Not retried (twice
        sent, the text would be spoken twice)."""
        return await self._act(self._path("Call", call_uuid, "Speak"), call_uuid, body)

    async def send_digits(self, call_uuid: str, digits: str) -> bool:
        """``POST Call/{uuid}/DTMF/``: false when the call is not live. Not retried."""
        path = self._path("Call", call_uuid, "DTMF")
        return await self._act(path, call_uuid, {"digits": digits})

    async def _get(self, path: str, params: Mapping[str, str] | None) -> Mapping[str, Any] | None:
        response = await self._rest.request(
            "GET", path, params=params, idempotent=True, expect=(404,)
        )
        if response.status == 404:
            return None
        if not isinstance(response.data, dict):
            raise CarrierError(f"plivo GET {path}: answer is not a JSON object", retryable=True)
        return response.data

    async def _act(self, path: str, call_uuid: str, body: Mapping[str, object]) -> bool:
        response = await self._rest.request(
            "POST", path, json={"call_uuid": call_uuid, **body}, idempotent=False, expect=(404,)
        )
        return response.status != 404

    def _path(self, resource: str, uuid: str | None = None, action: str | None = None) -> str:
        if not _AUTH_ID.fullmatch(self._auth_id):
            raise CarrierError("plivo: providers.plivo.auth_id is not an Auth ID", retryable=False)
        if uuid is not None and not is_call_id(uuid):
            raise CarrierError(f"plivo: not a call or request UUID: {uuid!r:.48}", retryable=False)
        parts = [resource, *(part for part in (uuid, action) if part is not None)]
        return f"/v1/Account/{self._auth_id}/" + "".join(f"{part}/" for part in parts)
