"""Telnyx Call Control v2 as voicecalld uses it: dial, call actions, and a call's status.

The requests are the official SDK's (telnyx 4.189, ``telnyx/resources/calls``): paths under
``/v2/calls``, JSON bodies, ``Authorization: Bearer <API key>``, JSON answers wrapped in
``data``. Every ``call_control_id`` is checked (``v2:``/``v3:`` + URL-safe characters, or a UUID)
before it enters a path, and only the actions voicecalld uses can be named.

**Idempotent commands.** Every action carries a ``command_id``; Telnyx ignores a command whose
``command_id`` it has already seen, so an action is retried after an ambiguous failure. A dial is
not: whether a repeated ``command_id`` on ``POST /calls`` returns the first call is not
documented, so a dial is sent once.

**Gone**: 404, or 422 with code ``90018`` ("Call has already ended"), on an action; 404 or 422 on
a status lookup (Telnyx keeps a call's status for about ten minutes after it ended and documents
only 422 for the rest, which is as good as gone for an id that passed the format check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import httpx

from voicecalld.carriers.base import CarrierError
from voicecalld.carriers.rest import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    RestClient,
    RetryPolicy,
    bearer_authorization,
)
from voicecalld.carriers.telnyx.wire import is_call_id
from voicecalld.config import TelnyxConfig

__all__ = ["ACTIONS", "CALL_ENDED", "TelnyxRest"]

ACTIONS: Final = frozenset(
    {"answer", "hangup", "reject", "speak", "send_dtmf", "streaming_start", "streaming_stop"}
)
CALL_ENDED: Final = "90018"
"""The error code of a command sent to a call that has already ended."""


class TelnyxRest:
    """The Call Control API of one Telnyx account, at ``api_base_url``."""

    def __init__(
        self,
        config: TelnyxConfig,
        client: httpx.AsyncClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._rest = RestClient(
            "telnyx",
            client,
            config.api_base_url,
            authorization=bearer_authorization(config.api_key),
            secrets=[config.api_key],
            timeout=timeout,
            retry=retry,
        )

    async def dial(self, body: Mapping[str, object]) -> str:
        """``POST /v2/calls``: the new call's ``call_control_id``. Sent once (see above)."""
        response = await self._rest.request("POST", "/v2/calls", json=body, idempotent=False)
        data = _data(response.data)
        control_id = data.get("call_control_id") if data is not None else None
        if not isinstance(control_id, str) or not is_call_id(control_id):
            raise CarrierError(
                "telnyx POST /v2/calls: answered without a call_control_id", retryable=False
            )
        return control_id

    async def action(self, call_control_id: str, action: str, body: Mapping[str, object]) -> bool:
        """``POST /v2/calls/{id}/actions/{action}``: true if accepted, false if the call is gone.

        ``body`` must carry a ``command_id``: that is what makes the retries safe.
        """
        if action not in ACTIONS:
            raise CarrierError(f"telnyx: unknown call action {action!r:.40}", retryable=False)
        if not body.get("command_id"):
            raise CarrierError(f"telnyx: {action} without a command_id", retryable=False)
        path = f"{self._call(call_control_id)}/actions/{action}"
        response = await self._rest.request(
            "POST", path, json=body, idempotent=True, expect=(404, 422)
        )
        if response.status == 404 or (response.status == 422 and response.error_code == CALL_ENDED):
            return False
        if response.status >= 400:
            raise self._rest.error("POST", path, response)
        return True

    async def fetch(self, call_control_id: str) -> Mapping[str, Any] | None:
        """``GET /v2/calls/{id}``: the call's ``data``, or ``None`` when it is gone."""
        path = self._call(call_control_id)
        response = await self._rest.request("GET", path, idempotent=True, expect=(404, 422))
        if response.status in (404, 422):
            return None
        data = _data(response.data)
        if data is None:
            raise CarrierError(f"telnyx GET {path}: answer without a data object", retryable=True)
        return data

    @staticmethod
    def _call(call_control_id: str) -> str:
        if not is_call_id(call_control_id):
            raise CarrierError(
                f"telnyx: not a call_control_id: {call_control_id!r:.48}", retryable=False
            )
        return f"/v2/calls/{call_control_id}"


def _data(body: object) -> Mapping[str, Any] | None:
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else None
