"""Structured logging to stderr, for journald: logfmt or JSON lines, secrets scrubbed.

Fields travel as ``extra=``: ``log.warning("hangup failed", extra={"call_id": c, "error": e})``
becomes ``level=warning logger=voicecalld.calls msg="hangup failed" call_id=c_1 error="..."``.
The scrubber replaces every configured secret wherever it appears in the final line, so a secret
that reaches a message by accident (an exception text, a URL) still never reaches the journal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

__all__ = ["Formatter", "configure"]

_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
MIN_SECRET: Final = 4
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Formatter(logging.Formatter):
    """One line per record: ``logfmt`` (key=value, quoted when needed) or ``json``."""

    def __init__(self, style: str = "logfmt", secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.json = style == "json"
        # longest first, so a secret containing another is scrubbed whole; a secret shorter
        # than MIN_SECRET would star out ordinary words and tells nothing when shown
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                fields[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields.setdefault("error", f"{type(error).__name__}: {error}")
            fields["traceback"] = self.formatException(record.exc_info)
        line = self._json(fields) if self.json else self._logfmt(fields)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line

    @staticmethod
    def _json(fields: dict[str, Any]) -> str:
        return orjson.dumps(fields, default=str).decode()

    @staticmethod
    def _logfmt(fields: dict[str, Any]) -> str:
        parts = []
        for key, value in fields.items():
            text = "" if value is None else str(value)
            if not text or any(c in text for c in ' ="\\\n\t'):
                escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                text = f'"{escaped}"'
            parts.append(f"{key}={text}")
        return " ".join(parts)


def configure(
    style: str = "logfmt",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """(Re)configure the ``voicecalld`` logger; called at start and on every reload."""
    logger = logging.getLogger("voicecalld")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(Formatter(style, secrets))
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    logger.propagate = False
