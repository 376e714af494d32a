"""Shared test helpers for the carrier wire and stream tests: samples, requests, XML trees."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import strategies as st

from voicecalld.carriers.base import WebhookRequest

SAMPLES = Path(__file__).parent / "samples"
CALL_ID = "c_0123456789abcdef01234567"

XmlTree = tuple[str, tuple[tuple[str, str], ...], str, tuple["XmlTree", ...]]


def sample(name: str) -> bytes:
    """A sample file's bytes, with the trailing newline an editor may add removed."""
    return (SAMPLES / name).read_bytes().rstrip(b"\n")


def request(
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    received_at: float = 1_767_225_600.0,
) -> WebhookRequest:
    return WebhookRequest(method, url, headers or {}, body, received_at)


def xml_tree(document: bytes | str) -> XmlTree:
    """An XML document as a comparable tree: tag, attributes, stripped text, children."""
    element = ET.fromstring(document)
    return _tree(element)


def _tree(element: ET.Element) -> XmlTree:
    return (
        element.tag,
        tuple(sorted(element.attrib.items())),
        (element.text or "").strip(),
        tuple(_tree(child) for child in element),
    )


# Form field names and values as carriers send them: any text, multi-valued.
field_names = st.text(min_size=1, max_size=12)
field_values = st.text(max_size=20)
multi_fields = st.dictionaries(
    field_names, st.lists(field_values, min_size=1, max_size=3), max_size=6
)

hostnames = st.from_regex(
    r"[a-z][a-z0-9]{0,10}(\.[a-z][a-z0-9]{0,10}){0,2}\.(com|net|io)", fullmatch=True
)
paths = st.from_regex(r"(/[A-Za-z0-9._~-]{1,10}){0,3}", fullmatch=True)
queries = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9._~-]{0,10}", fullmatch=True),
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
