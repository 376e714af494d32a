"""Twilio's REST API as voicecalld uses it: create, update (hang up, new TwiML) and fetch a call.

The requests are the official SDK's (twilio 9.13, ``twilio/rest/api/v2010/account/call``): paths
under ``/2010-04-01/Accounts/{AccountSid}/Calls``, form-encoded bodies, HTTP Basic with
``AccountSid:AuthToken``, JSON answers. The Account SID and every Call SID are checked
(``AC``/``CA`` + 32 hex) before they enter a path; anything else is a non-retryable
:class:`CarrierError` and nothing is sent.

"Gone", for an update, is either of Twilio's answers for a call that can no longer be changed:
404 (code 20404, the call is unknown to this account) or code 21220 "Invalid call state for this
operation" (the call is no longer in progress; documented for redirects, and what an update of a
finished call gets). Whether gone is success (a hang-up) or an error (new TwiML for a call that is
over) is the caller's decision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from voicecalld.carriers.base import CarrierError
from voicecalld.carriers.rest import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    RestClient,
    RetryPolicy,
    basic_authorization,
)
from voicecalld.carriers.twilio.wire import is_call_id
from voicecalld.config import TwilioConfig

__all__ = ["API_VERSION", "TwilioRest"]

API_VERSION: Final = "2010-04-01"
_ACCOUNT_SID: Final = re.compile(r"AC[0-9a-fA-F]{32}")
_GONE_CODES: Final = frozenset({"20404", "21220"})


class TwilioRest:
    """The Calls resource of one Twilio account, at ``api_base_url``."""

    def __init__(
        self,
        config: TwilioConfig,
        client: httpx.AsyncClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._account_sid = config.account_sid
        self._rest = RestClient(
            "twilio",
            client,
            config.api_base_url,
            authorization=basic_authorization(config.account_sid, config.auth_token),
            secrets=[config.auth_token],
            timeout=timeout,
            retry=retry,
        )

    async def create_call(self, form: Sequence[tuple[str, str]]) -> str:
        """``POST Calls.json``: the new call's SID. Never retried once sent (a second create
        would place a second call)."""
        path = self._calls() + ".json"
        response = await self._rest.request("POST", path, form=form, idempotent=False)
        sid = _string(response.data, "sid")
        if sid is None or not is_call_id(sid):
            raise CarrierError(f"twilio POST {path}: answered without a Call SID", retryable=False)
        return sid

    async def update_call(
        self, sid: str, form: Sequence[tuple[str, str]], *, idempotent: bool
    ) -> Mapping[str, Any] | None:
        """``POST Calls/{sid}.json``: the updated call, or ``None`` when the call is gone.

        ``idempotent`` is true for a status update (hanging up twice is hanging up once) and
        false for new TwiML (sent twice, it would play twice).
        """
        path = self._call(sid)
        response = await self._rest.request(
            "POST", path, form=form, idempotent=idempotent, expect=(400, 404)
        )
        if response.status == 404 or response.error_code in _GONE_CODES:
            return None
        if response.status >= 400:
            raise self._rest.error("POST", path, response)
        return _resource(response.data, "POST", path)

    async def fetch_call(self, sid: str) -> Mapping[str, Any] | None:
        """``GET Calls/{sid}.json``: the call, or ``None`` when Twilio does not know it (404)."""
        path = self._call(sid)
        response = await self._rest.request("GET", path, idempotent=True, expect=(404,))
        if response.status == 404:
            return None
        return _resource(response.data, "GET", path)

    def _calls(self) -> str:
        if not _ACCOUNT_SID.fullmatch(self._account_sid):
            raise CarrierError(
                "twilio: providers.twilio.account_sid is not an Account SID (AC + 32 hex)",
                retryable=False,
            )
        return f"/{API_VERSION}/Accounts/{self._account_sid}/Calls"

    def _call(self, sid: str) -> str:
        if not is_call_id(sid):
            raise CarrierError(f"twilio: not a Call SID: {sid!r:.48}", retryable=False)
        return f"{self._calls()}/{sid}.json"


def _resource(data: object, method: str, path: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise CarrierError(f"twilio {method} {path}: answer is not a JSON object", retryable=True)
    return data


def _string(data: object, key: str) -> str | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
