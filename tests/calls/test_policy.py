from __future__ import annotations

import pytest

from voicecalld.calls.policy import admits, digits, same_number


def test_digits_ignore_formatting() -> None:
    assert digits("+1 (415) 555-0100") == "14155550100"


@pytest.mark.parametrize(
    ("caller", "expected"),
    [("+14155550100", True), ("14155550100", True), ("+14155550199", False), ("", False)],
)
def test_allowlist_compares_digits(caller: str, expected: bool) -> None:
    assert admits("allowlist", caller, ["+14155550100"]) is expected


def test_open_and_disabled() -> None:
    assert admits("open", "+1", [])
    assert not admits("disabled", "+14155550100", ["+14155550100"])


def test_empty_numbers_are_never_the_same() -> None:
    assert not same_number("", "")


def test_only_ascii_digits_count() -> None:
    # "٤١٥" is 415 to str.isdigit() and int(): a caller must not match an allowlisted number
    # by spelling it in other scripts' digits
    assert digits("+\u0664\u0661\u0665") == ""
    assert not same_number("+\u0664\u0661\u0665", "+415")
