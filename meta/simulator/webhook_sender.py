"""Deliver webhooks the way Meta does: a signed JSON POST to the app's callback URL.

The body is serialised to bytes exactly once and those same bytes are signed and sent,
because the receiver verifies the HMAC over the raw body (`X-Hub-Signature-256`).
`verify_subscription` performs Meta's GET handshake used when a callback URL is set up.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import httpx

from meta.signature import HEADER, sign

USER_AGENT = "facebookexternalua"


def encode(payload: dict[str, Any]) -> bytes:
    # Meta sends compact JSON with non-ASCII characters escaped.
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_headers(body: bytes, app_secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", HEADER: sign(body, app_secret), "User-Agent": USER_AGENT}


class WebhookSender:
    """`await WebhookSender(url, secret).send(payload)`; `send_sync` for synchronous callers.

    An `httpx.AsyncClient` may be injected (connection reuse in benchmarks); otherwise one is
    created lazily and closed by `aclose()` / the async context manager.
    """

    def __init__(self, callback_url: str, app_secret: str, timeout_s: float = 10.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.callback_url = callback_url
        self._app_secret = app_secret
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None

    def prepare(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The exact bytes and headers that will be posted (handy for replay/tamper tests)."""
        body = encode(payload)
        return body, signed_headers(body, self._app_secret)

    async def send(self, payload: dict[str, Any]) -> httpx.Response:
        body, headers = self.prepare(payload)
        return await self.send_raw(body, headers)

    async def send_raw(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        return await self._client.post(self.callback_url, content=body, headers=headers)

    def send_sync(self, payload: dict[str, Any]) -> httpx.Response:
        body, headers = self.prepare(payload)
        with httpx.Client(timeout=self._timeout_s) as client:
            return client.post(self.callback_url, content=body, headers=headers)

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        self._client = None if self._owns_client else self._client

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def verify_subscription(callback_url: str, verify_token: str, challenge: str,
                        timeout_s: float = 10.0) -> httpx.Response:
    """Meta's subscription check: the app must echo `hub.challenge` when the verify token matches."""
    params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
    with httpx.Client(timeout=timeout_s) as client:
        return client.get(callback_url, params=params, headers={"User-Agent": USER_AGENT})


async def averify_subscription(callback_url: str, verify_token: str, challenge: str,
                               timeout_s: float = 10.0) -> httpx.Response:
    params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return await client.get(callback_url, params=params, headers={"User-Agent": USER_AGENT})
