"""The inbound policy (SPEC §6): which callers may reach the application.

Numbers compare by their digits only: carriers differ on the leading ``+`` (Plivo sends
``14155550100``, Twilio ``+14155550100``), and an allowlist must not depend on which one called.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["admits", "digits", "same_number"]


def digits(number: str) -> str:
    """The digits of a phone number: ``+1 (415) 555-0100`` → ``14155550100``."""
    return "".join(c for c in number if "0" <= c <= "9")  # ASCII: not "٤" or "²"


def same_number(a: str, b: str) -> bool:
    return bool(digits(a)) and digits(a) == digits(b)


def admits(policy: str, caller: str, allow_from: Iterable[str]) -> bool:
    """Whether an inbound call from ``caller`` is accepted under ``policy``.

    ``disabled`` rejects every inbound call, ``open`` accepts all, ``allowlist`` accepts the
    numbers of ``allow_from``.
    """
    if policy == "open":
        return True
    if policy == "allowlist":
        return any(same_number(caller, allowed) for allowed in allow_from)
    return False
