"""Structured logs: logfmt and JSON lines, fields from ``extra``, secrets never shown."""

from __future__ import annotations

import io
import logging

import orjson

from voicecalld import log as logs


def emit(style: str, secrets: list[str], message: str, **fields: object) -> str:
    stream = io.StringIO()
    logs.configure(style, "debug", secrets, stream=stream)
    logging.getLogger("voicecalld.test").info(message, extra=fields)
    return stream.getvalue().strip()


def test_logfmt_quotes_what_needs_it() -> None:
    line = emit("logfmt", [], "hang-up failed", call_id="c_1", error='503 "busy"', note=None)
    assert 'msg="hang-up failed"' in line
    assert "call_id=c_1" in line
    assert 'error="503 \\"busy\\""' in line
    assert "note=" not in line
    assert "level=info logger=voicecalld.test" in line


def test_json_lines_carry_the_fields() -> None:
    record = orjson.loads(emit("json", [], "placed", call_id="c_2", attempt=3))
    assert record["msg"] == "placed"
    assert record["call_id"] == "c_2"
    assert record["attempt"] == 3


def test_secrets_are_scrubbed_wherever_they_appear() -> None:
    line = emit(
        "logfmt",
        ["s3cr3t-token", "tok"],
        "request to https://AC1:s3cr3t-token@api failed: bad token",
        error="Authorization: Basic s3cr3t-token",
    )
    assert "s3cr3t-token" not in line
    assert line.count("***") == 2
    assert "bad token" in line, "a secret too short to mask is left alone, not starred everywhere"
