"""Tokens never reach a log line: every log record is scrubbed when it is created.

Scrubbing at record creation (the process's log record factory) covers every logger and handler,
uvicorn's access log included, whatever logging configuration is installed later.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

# API tokens (war_...), a token in a query string, and bearer credentials (header or WebSocket subprotocol).
_PATTERNS = (
    re.compile(r"\bwar_[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(access_token=)[^&\s\"',;%]+"),
    re.compile(r"(?i)\b(bearer(?:\s+|\.))[^\s\"',;%]+"),
)


def scrub(text: str) -> str:
    """`text` with every token replaced by a mask."""
    text = _PATTERNS[0].sub("war_" + MASK, text)
    for pattern in _PATTERNS[1:]:
        text = pattern.sub(r"\g<1>" + MASK, text)
    return text


def _scrub_value(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) else value


def scrub_record(record: logging.LogRecord) -> None:
    """Scrub a record's message and arguments in place.

    Arguments stay arguments where that suffices (uvicorn's access formatter unpacks them); a token
    split across message and arguments (`"Bearer %s", token`) is caught on the formatted message,
    which then replaces both. `%` never counts as part of a token, so placeholders survive.
    """
    if isinstance(record.msg, str):
        record.msg = scrub(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_scrub_value(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: _scrub_value(arg) for key, arg in record.args.items()}
    if record.args:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: logging reports it itself
            return
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()


class TokenScrubFilter(logging.Filter):
    """The same scrubbing as a filter, for logging configurations that want it on a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_installed = False


def install_token_scrubbing() -> None:
    """Wrap the process's log record factory once: every record is scrubbed as it is made."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
