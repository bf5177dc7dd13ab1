"""Logging: plain text by default, one JSON object per line with `WA_ROUTER_LOG_FORMAT=json`.

A JSON line carries `organization`, `inbox`, `transaction` and `wamid` where known: from the request being
served (its path parameters, read at the moment of logging, so they are set once the route matched) or from
the record's `extra`. Secrets never reach a log in either format: bearer tokens, access tokens, app secrets,
keys and passwords (also the one in a database URL) are masked by a filter on the handler.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.types import ASGIApp, Receive, Scope, Send

CONTEXT_FIELDS = {"organization": "org_id", "inbox": "inbox_id", "transaction": "tx_id", "wamid": "wamid"}

_request_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("wa_router_request", default=None)

_MASK = "***"
_SECRETS = [
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {_MASK}"),
    # key=value, key: value, "key": "value" for every name that holds a secret
    (re.compile(r"""(?i)(["']?\b(?:access_token|app_secret|secret_key|admin_token|auth_token|password|token|"""
                r"""secret|hub\.verify_token|verify_token)\b["']?\s*[:=]\s*["']?)[^\s"'&,;}]+"""), rf"\1{_MASK}"),
    # user:password@ in URLs (database URLs)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@"), rf"\1{_MASK}@"),
    # the webhook signature header's value
    (re.compile(r"(?i)(sha256=)[0-9a-f]{16,}"), rf"\1{_MASK}"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in the rendered message (arguments included) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """organization / inbox / transaction / wamid: the record's extras first, then the request's path."""
    found: dict[str, Any] = {}
    scope = _request_scope.get()
    params = (scope or {}).get("path_params") or {}
    for name, param in CONTEXT_FIELDS.items():
        value = getattr(record, name, None)
        if value is None:
            value = params.get(param)
        if value is not None:
            found[name] = value
    return found


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class LogContext:
    """ASGI middleware: the request being served, for the log lines written while serving it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = _request_scope.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_scope.reset(token)


def configure_logging(log_format: str, level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger in the chosen format, secrets masked; returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactSecrets())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
