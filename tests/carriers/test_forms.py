"""The shared helpers: strict form decoding, E.164, base64 spellings, safe XML answers."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.carriers import forms

from .helpers import CALL_ID, multi_fields


@given(fields=multi_fields)
def test_parse_form_reads_what_urlencode_writes(fields: dict[str, list[str]]) -> None:
    assert forms.parse_form(urlencode(fields, doseq=True)) == fields
    assert forms.parse_form(urlencode(fields, doseq=True).encode()) == fields


@given(text=st.from_regex(r"([A-Za-z0-9+ ._-]|%[0-9A-F]{2}|&|=){0,40}", fullmatch=True))
def test_parse_form_agrees_with_parse_qs_on_valid_input(text: str) -> None:
    try:
        ours = forms.parse_form(text)
    except ValueError:  # escapes that are not UTF-8: parse_qs replaces them, we refuse
        return
    assert ours == parse_qs(text, keep_blank_values=True, errors="strict")


def test_parse_form_keeps_order_and_blank_values() -> None:
    assert forms.parse_form("b=2&a=1&b=3&flag&&c=") == {
        "b": ["2", "3"],
        "a": ["1"],
        "flag": [""],
        "c": [""],
    }
    assert forms.parse_form("") == {}
    assert forms.parse_form("a+b=c+d%2B") == {"a b": ["c d+"]}


@pytest.mark.parametrize("text", ["a=%", "a=%4", "a=%zz", "%G1=1", "a=%ff", "a=%C3"])
def test_parse_form_is_strict(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        forms.parse_form(text)


def test_latin1_never_fails() -> None:
    assert forms.parse_form("a=%ff", encoding="latin-1") == {"a": ["\xff"]}


def test_call_param() -> None:
    assert forms.call_param(f"https://x/w?call={CALL_ID}&x=1") == CALL_ID
    assert forms.call_param("https://x/w?x=1") is None
    assert forms.call_param("https://x/w?call=../../etc") is None
    assert forms.call_param("https://x/w?call=" + "a" * 65) is None
    with pytest.raises(ValueError):  # noqa: PT011
        forms.call_param("https://x/w?call=%zz")


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("14155550100", "+14155550100"),
        ("+14155550100", "+14155550100"),
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("anonymous", "anonymous"),
        ("1", "1"),
        ("1" * 16, "1" * 16),
        ("", None),
        (None, None),
        ("١٤١٥٥٥٥٠١٠٠", "١٤١٥٥٥٥٠١٠٠"),
    ],
)
def test_e164(number: str | None, expected: str | None) -> None:
    assert forms.e164(number) == expected


@given(data=st.binary(max_size=80))
def test_decode_base64_takes_every_spelling(data: bytes) -> None:
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    for spelling in (
        standard,
        urlsafe,
        standard.rstrip("="),
        urlsafe.rstrip("="),
        f" {standard}\n",
    ):
        assert forms.decode_base64(spelling) == data


@pytest.mark.parametrize("text", ["a", "abc!", "ab=c", "é===", "A" * 5])
def test_decode_base64_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        forms.decode_base64(text)


def test_nonempty_str_and_dtmf_digit() -> None:
    assert forms.nonempty_str("x", "what") == "x"
    assert forms.dtmf_digit("a") == "A"
    for bad in ("", None, 1):
        with pytest.raises(ValueError, match="what"):
            forms.nonempty_str(bad, "what")
    for bad in ("", "12", "E", 1, None):
        with pytest.raises(ValueError, match="DTMF"):
            forms.dtmf_digit(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ""), ("", ""), ("0123456789", "0123456789"), ("*#abcdABCD", "*#ABCDABCD")],
)
def test_dtmf_digits_of_a_digits_field(value: str | None, expected: str) -> None:
    assert forms.dtmf_digits(value) == expected


@pytest.mark.parametrize("bad", ["1x", "hangup", "E", " 1", "1,2", "\u0661", "\uff11"])
def test_dtmf_digits_refuses_what_no_keypad_sends(bad: str) -> None:
    with pytest.raises(ValueError, match="DTMF"):
        forms.dtmf_digits(bad)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(8000, True), (16000, True), (0, False), (True, False), ("8000", False), (96000, False)],
)
def test_sample_rate(value: object, ok: bool) -> None:
    if ok:
        assert forms.sample_rate(value) == value
    else:
        with pytest.raises(ValueError, match="sample rate"):
            forms.sample_rate(value)


@given(text=st.text(max_size=50))
def test_xml_reply_is_always_well_formed(text: str) -> None:
    root = ET.Element("Response")
    ET.SubElement(root, "Say", voice=text).text = text
    answer = forms.xml_reply(root)
    parsed = ET.fromstring(answer.body)
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert (answer.status, answer.content_type) == (200, "text/xml; charset=utf-8")
    kept = "".join(c for c in text if (c in "\t\n\r" or c >= " ") and not "\ud800" <= c <= "\udfff")
    kept = "".join(c for c in kept if c not in "\ufffe\uffff")
    # XML parsers turn line ends into "\n": harmless for words to speak.
    assert (parsed[0].text or "") == kept.replace("\r\n", "\n").replace("\r", "\n")


def test_xml_reply_strips_exactly_what_xml_1_0_cannot_carry() -> None:
    # XML 1.0 §2.2: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
    def is_char(c: str) -> bool:
        code = ord(c)
        return (
            c in "\t\n\r"
            or 0x20 <= code <= 0xD7FF
            or 0xE000 <= code <= 0xFFFD
            or 0x10000 <= code <= 0x10FFFF
        )

    every = "".join(map(chr, range(0x110000)))
    root = ET.Element("Say")
    root.text = every
    answer = forms.xml_reply(root)
    assert ET.fromstring(answer.body).text == "".join(filter(is_char, every)).replace("\r", "\n")
