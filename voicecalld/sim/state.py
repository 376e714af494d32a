"""What the carrier simulator knows: its accounts, and one record per simulated carrier call.

The REST surface (:mod:`.rest`) creates and changes these records; the webhook sender and the
media streams of the simulator read them, so a record carries everything a carrier keeps about a
call: its carrier id (and Plivo's separate request id), the numbers, the carrier-side status in
Twilio's vocabulary (which Plivo and Telnyx statuses map onto), where its callbacks go, and
voicecalld's own call id when voicecalld put one in those callbacks. Pure data, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

import attrs
from nacl.signing import SigningKey

__all__ = [
    "CARRIERS",
    "SimAccounts",
    "SimCall",
    "SimStatus",
    "new_carrier_id",
    "telnyx_seed_for",
]

CARRIERS = ("twilio", "plivo", "telnyx")
_UPPER_ALNUM: Final = string.ascii_uppercase + string.digits


@attrs.frozen
class SimAccounts:
    """The credentials the simulated carriers accept (fresh random ones by default)."""

    twilio_account_sid: str = attrs.field(factory=lambda: "AC" + secrets.token_hex(16))
    twilio_auth_token: str = attrs.field(factory=lambda: secrets.token_hex(16), repr=False)
    plivo_auth_id: str = attrs.field(
        factory=lambda: "MA" + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(18))
    )
    plivo_auth_token: str = attrs.field(factory=lambda: secrets.token_urlsafe(30), repr=False)
    telnyx_api_key: str = attrs.field(factory=lambda: "KEY" + secrets.token_urlsafe(30), repr=False)
    telnyx_connection_id: str = attrs.field(factory=lambda: str(secrets.randbelow(10**19)))
    telnyx_signing_seed: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    """Signs the simulated Telnyx webhooks; :attr:`telnyx_public_key` verifies them."""

    @property
    def telnyx_public_key(self) -> str:
        verify_key = SigningKey(self.telnyx_signing_seed).verify_key
        return base64.b64encode(bytes(verify_key)).decode("ascii")


def telnyx_seed_for(api_key: str) -> bytes:
    """The simulator's Telnyx signing seed for a config's ``api_key``.

    ``voicecalld simulate init`` writes the public key of this seed into the config it makes,
    so the simulator, given only that config, can sign webhooks the daemon accepts; and a real
    Telnyx config (Telnyx's own public key) is recognised as not made for the simulator.
    """
    return hashlib.sha256(b"voicecalld simulator telnyx webhook key\0" + api_key.encode()).digest()


class SimStatus(StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def live(self) -> bool:
        return self in (SimStatus.QUEUED, SimStatus.RINGING, SimStatus.IN_PROGRESS)


@attrs.define
class SimCall:
    carrier: str
    carrier_id: str
    """Twilio CallSid, Plivo CallUUID, Telnyx call_control_id."""
    from_number: str
    to: str
    status: SimStatus = SimStatus.QUEUED
    direction: str = "outbound"
    """``outbound`` (created through the carrier's API) or ``inbound``."""
    call_id: str | None = None
    """voicecalld's call id, as it appeared in the callback URL (``?call=``) or client_state."""
    request_id: str | None = None
    """Plivo's request UUID (what creating the call answered)."""
    answer_url: str | None = None
    """Where the carrier asks what to do: Twilio ``Url``, Plivo ``answer_url``."""
    ring_url: str | None = None
    status_callback: str | None = None
    """Twilio ``StatusCallback``, Plivo ``hangup_url``, Telnyx ``webhook_url``."""
    status_events: tuple[str, ...] = ()
    """Twilio ``StatusCallbackEvent`` subscriptions."""
    client_state: str | None = None
    """Telnyx ``client_state``, as last set by a command."""
    ring_timeout: int | None = None
    time_limit: int | None = None
    answered: bool = False
    created_at: float = attrs.field(factory=time.time)
    actions: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    """What the REST API did to the call, in order: ``(name, fields)``, e.g. ``("speak",
    {"payload": ...})`` or ``("twiml", {"Twiml": ...})``."""
    command_ids: set[str] = attrs.field(factory=set)
    """Telnyx ``command_id`` values already applied (a repeat is ignored)."""
    _watchers: list[Callable[[], None]] = attrs.field(factory=list, repr=False, eq=False)

    def set_status(self, status: SimStatus) -> None:
        self.status = status
        if status is SimStatus.IN_PROGRESS:
            self.answered = True
        self._changed()

    def record(self, name: str, fields: dict[str, Any]) -> None:
        """Log what the REST API did to the call (see :attr:`actions`) and tell the watchers."""
        self.actions.append((name, fields))
        self._changed()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously) after every status change and recorded action: the
        simulator's player of the call wakes up and reads what changed."""
        self._watchers.append(callback)

    def _changed(self) -> None:
        for callback in self._watchers:
            callback()


def new_carrier_id(carrier: str) -> str:
    """A fresh id in the carrier's own format (what its id checks accept)."""
    if carrier == "twilio":
        return "CA" + secrets.token_hex(16)
    if carrier == "plivo":
        return str(uuid.uuid4())
    if carrier == "telnyx":
        return "v3:" + secrets.token_urlsafe(36)
    raise ValueError(f"unknown carrier {carrier!r}")
