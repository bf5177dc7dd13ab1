"""Async client for the parts of Meta's Graph API that wa-router calls.

`GraphClient(base_url, timeout_s)` where `base_url` includes the version, e.g.
`https://graph.facebook.com/v25.0` (or the simulator's `http://127.0.0.1:9000/v25.0`).
Every failure surfaces as `GraphAPIError`: Meta's `{"error": {...}}` fields when Meta answered,
status 502 with `code=None` when it could not be reached or answered garbage.

Access tokens travel only in the `Authorization` header and are never logged or put into
error messages; URLs are logged without their query string because Meta's `paging.next`
URLs may embed an `access_token`.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

WABA_FIELDS = "id,name,currency,timezone_id,message_template_namespace"
PHONE_NUMBER_FIELDS = "id,display_phone_number,verified_name,quality_rating"
TEMPLATE_FIELDS = "id,name,language,category,status,components,rejected_reason"
# Guards against a server that keeps handing out `next` links forever.
MAX_PAGES = 1000
# Codes Meta documents as transient (throttling / temporary errors): retrying later may succeed.
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 32, 613, 80007, 130429, 131000, 131016, 131056, 133004})


class GraphAPIError(Exception):
    """A Graph API failure: HTTP status plus Meta's error fields (code None for transport failures)."""

    def __init__(self, status_code: int, message: str, code: int | None = None, type: str | None = None,
                 error_subcode: int | None = None, fbtrace_id: str | None = None,
                 details: str | None = None) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.type = type
        self.error_subcode = error_subcode
        self.fbtrace_id = fbtrace_id
        # Cloud API puts a human explanation under error.error_data.details.
        self.details = details
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"HTTP {self.status_code}"]
        if self.code is not None:
            parts.append(f"code {self.code}" + (f"/{self.error_subcode}" if self.error_subcode else ""))
        text = f"Graph API error ({', '.join(parts)}): {self.message}"
        if self.details:
            text += f" - {self.details}"
        if self.fbtrace_id:
            text += f" [fbtrace_id={self.fbtrace_id}]"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with all fields (it crosses Ray actor boundaries).
        return (_rebuild_error, (self.status_code, self.message, self.code, self.type, self.error_subcode,
                                 self.fbtrace_id, self.details))

    @property
    def is_auth_error(self) -> bool:
        """The token is invalid, expired or revoked: the tenant must reconnect."""
        return self.code == 190 or self.status_code == 401

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or self.status_code in {429, 500, 502, 503, 504}

    @classmethod
    def from_response(cls, response: httpx.Response) -> GraphAPIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(502 if response.is_success else response.status_code,
                       f"Graph API returned HTTP {response.status_code} without a Graph error body "
                       f"({_content_type(response)})")
        error_data = error.get("error_data")
        details = error_data.get("details") if isinstance(error_data, dict) else None
        return cls(
            status_code=response.status_code,
            message=str(error.get("message") or "Unknown Graph API error"),
            code=_int_or_none(error.get("code")),
            type=error.get("type") if isinstance(error.get("type"), str) else None,
            error_subcode=_int_or_none(error.get("error_subcode")),
            fbtrace_id=error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None,
            details=details if isinstance(details, str) else None,
        )


def _rebuild_error(*args: Any) -> GraphAPIError:
    return GraphAPIError(*args)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "no content type")


def _redact(url: str | httpx.URL) -> str:
    """The URL without query or fragment (it may hold an access_token)."""
    parts = urlsplit(str(url))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _segment(object_id: str) -> str:
    # Ids come from tenants' input: quote them so they cannot add path segments or queries.
    if not object_id:
        raise ValueError("empty Graph object id")
    return quote(object_id, safe="")


class GraphClient:
    """`async with GraphClient(settings.graph_base_url, settings.graph_timeout_s) as graph: ...`"""

    def __init__(self, base_url: str, timeout_s: float = 10.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self._origin = urlsplit(self.base_url)[:2]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ---- public API ------------------------------------------------------------------------------

    async def get_waba(self, waba_id: str, access_token: str) -> dict[str, Any]:
        return await self._request("GET", f"/{_segment(waba_id)}", access_token,
                                   params={"fields": WABA_FIELDS})

    async def list_phone_numbers(self, waba_id: str, access_token: str) -> list[dict[str, Any]]:
        return await self._paged(f"/{_segment(waba_id)}/phone_numbers", access_token,
                                 {"fields": PHONE_NUMBER_FIELDS})

    async def send_message(self, phone_number_id: str, access_token: str,
                           payload: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        # The key makes a retry after a lost answer safe where the server honours it (the simulator).
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._request("POST", f"/{_segment(phone_number_id)}/messages", access_token,
                                   json=payload, headers=extra)

    async def delete_template(self, waba_id: str, access_token: str, name: str,
                              hsm_id: str | None = None) -> dict[str, Any]:
        params = {"name": name, **({"hsm_id": hsm_id} if hsm_id else {})}
        return await self._request("DELETE", f"/{_segment(waba_id)}/message_templates", access_token,
                                   params=params)

    async def create_template(self, waba_id: str, access_token: str,
                              template: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"/{_segment(waba_id)}/message_templates", access_token,
                                   json=template)

    async def list_templates(self, waba_id: str, access_token: str) -> list[dict[str, Any]]:
        return await self._paged(f"/{_segment(waba_id)}/message_templates", access_token,
                                 {"fields": TEMPLATE_FIELDS})

    # ---- plumbing --------------------------------------------------------------------------------

    async def _paged(self, path: str, access_token: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Collect `data` across pages, following `paging.next` (or the `after` cursor)."""
        items: list[dict[str, Any]] = []
        url: str = path
        query: dict[str, str] | None = dict(params)
        seen_after: set[str] = set()
        for _ in range(MAX_PAGES):
            body = await self._request("GET", url, access_token, params=query)
            data = body.get("data")
            if not isinstance(data, list):
                raise GraphAPIError(502, f"Graph API page for {path} has no data list")
            items.extend(d for d in data if isinstance(d, dict))
            paging = body.get("paging")
            paging = paging if isinstance(paging, dict) else {}
            next_url = paging.get("next")
            cursors = paging.get("cursors")
            after = cursors.get("after") if isinstance(cursors, dict) else None
            # Meta signals "more" by the presence of `next`; its cursors appear on last pages too.
            if not isinstance(next_url, str) or not data:
                return items
            if isinstance(after, str):
                if after in seen_after:  # a server repeating itself would loop forever
                    return items
                seen_after.add(after)
            if urlsplit(next_url)[:2] == self._origin:
                url, query = next_url, None
            elif isinstance(after, str):
                # Never send the bearer token to a host other than the configured Graph host.
                url, query = path, {**params, "after": after}
            else:
                raise GraphAPIError(502, f"Graph API paging for {path} points to another host")
        raise GraphAPIError(502, f"Graph API paging for {path} exceeded {MAX_PAGES} pages")

    async def _request(self, method: str, path_or_url: str, access_token: str,
                       params: dict[str, str] | None = None, json: Any = None,
                       headers: dict[str, str] | None = None) -> dict[str, Any]:
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.base_url + path_or_url
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json", **(headers or {})}

        async def send() -> httpx.Response:
            return await self._client.request(method, url, params=params, json=json, headers=headers,
                                              timeout=self.timeout_s)

        try:
            try:
                response = await send()
            except httpx.RemoteProtocolError:
                if method != "GET":
                    raise  # a send may have landed: never repeated blindly
                # A kept-alive connection the server had closed: a read is asked again on a fresh one, once.
                log.info("Graph %s %s: connection closed without an answer; asking again", method, _redact(url))
                response = await send()
        except httpx.TimeoutException as exc:
            log.warning("Graph %s %s timed out after %ss", method, _redact(url), self.timeout_s)
            raise GraphAPIError(502, f"Graph API timed out after {self.timeout_s}s "
                                     f"({type(exc).__name__}) on {method} {_redact(url)}") from exc
        except httpx.HTTPError as exc:
            log.warning("Graph %s %s unreachable: %s", method, _redact(url), type(exc).__name__)
            reason = str(exc).replace(access_token, "<redacted>") if access_token else str(exc)
            raise GraphAPIError(502, f"Graph API unreachable ({type(exc).__name__}: {reason}) "
                                     f"on {method} {_redact(url)}") from exc
        if not response.is_success:
            error = GraphAPIError.from_response(response)
            log.info("Graph %s %s failed: %s", method, _redact(url), error)
            raise error
        try:
            body = response.json()
        except ValueError:
            raise GraphAPIError(502, f"Graph API returned a non-JSON body ({_content_type(response)}) "
                                     f"on {method} {_redact(url)}") from None
        if not isinstance(body, dict):
            raise GraphAPIError(502, f"Graph API returned a non-object JSON body on {method} {_redact(url)}")
        return body
