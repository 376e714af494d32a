"""Pure helpers the carrier wire modules share: form fields, numbers, base64 and XML answers.

Everything here is written once so that Twilio, Plivo and Telnyx read their inputs the same way:

- :func:`parse_form` is strict. A bad ``%`` escape or text invalid in the chosen encoding raises
  ``ValueError``; nothing is guessed, because a guessed field is a field the signature did not
  cover. Field order and repeated names are kept (signature schemes sort them, parsers take the
  first).
- :func:`decode_base64` accepts standard and URL-safe alphabets, with or without padding, and
  rejects anything else: signatures are compared as bytes, so two spellings of one signature are
  one signature (and one replay key).
- :func:`xml_reply` is the only way an XML answer is serialised: it strips characters XML 1.0
  cannot carry and lets :mod:`xml.etree` escape the rest, so no caller can emit invalid XML.

No I/O, no trio.
"""

from __future__ import annotations

import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from urllib.parse import unquote_to_bytes, urlsplit

from voicecalld.carriers.base import HttpReply, WebhookRequest

__all__ = [
    "Fields",
    "call_param",
    "decode_base64",
    "dtmf_digit",
    "dtmf_digits",
    "e164",
    "first",
    "nonempty_str",
    "parse_form",
    "query_fields",
    "sample_rate",
    "xml_reply",
]

Fields = dict[str, list[str]]
"""Decoded form fields: every value of every name, in the order received."""

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]{2,15}")
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""What XML 1.0 cannot carry, spelled as the few characters it excludes: the complement of its
Char production compiles ten times slower (a start-up cost) and matches the same characters."""
_DTMF = frozenset("0123456789*#ABCDabcd")


def parse_form(text: str | bytes, *, encoding: str = "utf-8") -> Fields:
    """Decode an ``application/x-www-form-urlencoded`` body or query string.

    ``+`` is a space, every ``%`` must start a two-digit hex escape, and the decoded bytes must
    be valid ``encoding`` (raises ``ValueError`` otherwise). Empty segments are skipped and a
    segment without ``=`` is a name with an empty value, as ``urllib.parse.parse_qs`` with
    ``keep_blank_values=True`` reads it (the carriers' own SDKs use that reader).

    >>> parse_form("To=%2B14155550199&Digits=1&Digits=2")
    {'To': ['+14155550199'], 'Digits': ['1', '2']}
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    fields: Fields = {}
    for segment in raw.split(b"&"):
        if not segment:
            continue
        name, _, value = segment.partition(b"=")
        fields.setdefault(_unquote(name, encoding), []).append(_unquote(value, encoding))
    return fields


def _unquote(raw: bytes, encoding: str) -> str:
    raw = raw.replace(b"+", b" ")
    if b"%" not in raw:  # most fields: nothing to unescape
        return raw.decode(encoding)
    if _BAD_ESCAPE.search(raw):
        raise ValueError(f"bad percent escape in form field {raw[:40]!r}")
    return unquote_to_bytes(raw).decode(encoding)


def body_fields(request: WebhookRequest) -> Fields:
    """The decoded form body of ``request``, parsed once per request (``ValueError`` if bad).

    Webhook verification, the replay key and parsing all read the same fields; on the webhook
    path each parse costs about 20 µs, so the first result is kept in ``request.memo``.
    """
    return _memo(request, "body", lambda: parse_form(request.body))


def url_query(request: WebhookRequest) -> Fields:
    """The decoded query of ``request.url``, parsed once per request (``ValueError`` if bad)."""
    return _memo(request, "query", lambda: query_fields(request.url))


def _memo(request: WebhookRequest, key: str, compute: Callable[[], Fields]) -> Fields:
    if key not in request.memo:
        try:
            request.memo[key] = compute()
        except ValueError as error:
            request.memo[key] = error
    value = request.memo[key]
    if isinstance(value, ValueError):
        raise ValueError(str(value))
    return value  # type: ignore[return-value]


def query_fields(url: str, *, encoding: str = "utf-8") -> Fields:
    """The decoded query of ``url`` (strict, as :func:`parse_form`)."""
    return parse_form(urlsplit(url).query, encoding=encoding)


def first(fields: Fields, name: str) -> str | None:
    """The first value of ``name``, or ``None`` when absent."""
    values = fields.get(name)
    return values[0] if values else None


def call_param(url: str) -> str | None:
    """voicecalld's own call id from the ``call`` query parameter of a callback URL.

    voicecalld puts ``?call=<id>`` on every callback URL it hands a carrier. A value that cannot
    be one of our ids is ignored (``None``) rather than trusted; a query that is not valid form
    encoding raises ``ValueError``.
    """
    value = first(query_fields(url), "call")
    return value if value is not None and _CALL_ID.fullmatch(value) else None


def e164(number: str | None) -> str | None:
    """A phone number as E.164 where the carrier dropped the ``+`` (Plivo: ``14155550100``).

    Anything that is not 2-15 bare digits (already ``+``-prefixed, a SIP URI, ``anonymous``)
    is returned unchanged; an empty value is ``None``.
    """
    if not number:
        return None
    return "+" + number if _DIGITS.fullmatch(number) else number


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; ``ValueError`` for anything else."""
    data = text.strip().encode("ascii").translate(_URLSAFE)
    data += b"=" * (-len(data) % 4)
    return binascii.a2b_base64(data, strict_mode=True)


def nonempty_str(value: object, what: str) -> str:
    """``value`` when it is a non-empty string; ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a non-empty string, got {value!r:.40}")
    return value


def dtmf_digit(value: object) -> str:
    """One DTMF symbol (``0-9``, ``*``, ``#``, ``A-D``); ``ValueError`` otherwise."""
    if not isinstance(value, str) or value not in _DTMF:
        raise ValueError(f"not a DTMF digit: {value!r:.40}")
    return value.upper()


def dtmf_digits(value: str | None) -> str:
    """The DTMF symbols of a ``Digits`` form field, upper-cased; ``""`` when none were pressed.

    Twilio and Plivo post the keys a caller pressed as one ``Digits`` string, and an empty (or
    absent) one when the caller pressed nothing before a timeout: that is no digits, not an
    error. Anything but ``0-9``, ``*``, ``#`` and ``A-D`` raises ``ValueError``, as
    :func:`dtmf_digit` does for Telnyx, so no text a carrier never sends becomes DTMF events.
    """
    if not value:
        return ""
    if not _DTMF.issuperset(value):
        raise ValueError(f"not DTMF digits: {value!r:.40}")
    return value.upper()


def sample_rate(value: object) -> int:
    """A media stream's sample rate: a positive integer up to 48 kHz; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 48000:
        raise ValueError(f"not a sample rate: {value!r:.40}")
    return value


def xml_reply(root: ET.Element) -> HttpReply:
    """Serialise an answer document as ``200 text/xml`` (UTF-8, with an XML declaration).

    Text and attribute values are cleaned of characters XML 1.0 cannot carry (control
    characters, lone surrogates) before :mod:`xml.etree` escapes them, so a message to speak
    can never make the document invalid.
    """
    for element in root.iter():
        if element.text:
            element.text = _XML_INVALID.sub("", element.text)
        for name, value in element.attrib.items():
            element.attrib[name] = _XML_INVALID.sub("", value)
    document = '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")
    return HttpReply(200, "text/xml; charset=utf-8", document.encode("utf-8"))
