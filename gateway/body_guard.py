"""Every request body bounded, and JSON text no store can hold refused, before any route runs.

Routes read their bodies before authentication (FastAPI parses the body first): without a bound, anyone
could make the gateway read and parse gigabytes. A declared Content-Length over the limit is refused
before a byte is read; a body without one is counted while it streams. The webhook has its own limit
(Meta's deliveries) and cleans its text itself; API bodies holding a lone UTF-16 surrogate (`"\\ud800"`,
valid JSON, but no UTF-8 store can hold it) are refused with a 422 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meta.unicode_safe import lone_surrogate_path, may_hold_surrogates

WEBHOOK_PREFIX = "/webhooks/"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"body larger than {limit} bytes")


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_webhook_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_webhook_body_bytes = max_webhook_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        webhook = str(scope.get("path", "")).startswith(WEBHOOK_PREFIX)
        limit = self.max_webhook_body_bytes if webhook else self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Refused unread: the connection is closed rather than read on.
            await _send_json(send, 413, {"detail": f"body larger than {limit} bytes"}, close=True)
            return
        if webhook:
            # Streamed to the route (which verifies the signature over the raw bytes), counted on the way.
            await self.app(scope, _counting(receive, limit), send)
            return
        try:
            body = await _read_all(receive, limit)
        except BodyTooLarge as exc:
            await _send_json(send, 413, {"detail": exc.detail}, close=True)
            return
        # Whatever the declared type (FastAPI parses a body without one as JSON too).
        problem = _unstorable_text(body)
        if problem is not None:
            await _send_json(send, 422, {"detail": [problem]})
            return
        await self.app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)  # FastAPI and Starlette answer an HTTPException as its status
        return message

    return counted


async def _read_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to answer
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replayed


def _unstorable_text(body: bytes) -> dict[str, Any] | None:
    """The 422 entry for a JSON body holding a lone surrogate; None for any other body (the route judges it)."""
    if not may_hold_surrogates(body):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: FastAPI's own 422 names it
    path = lone_surrogate_path(document)
    if path is None:
        return None
    return {"loc": ["body", *path], "msg": "text contains a lone UTF-16 surrogate (not valid Unicode)",
            "type": "string_unicode"}


async def _send_json(send: Send, status: int, content: dict[str, Any], *, close: bool = False) -> None:
    response = JSONResponse(status_code=status, content=content, headers={"Connection": "close"} if close else None)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
