"""API calls that carry a body are authenticated before a byte of it is read.

FastAPI reads and parses a route's body before its dependencies run, authentication among them: a
caller without a valid token could make every API route read and parse up to the body limit. This
middleware resolves the bearer token first (from the principal cache, usually) and answers exactly as
the routes' own authentication does; the route resolves it again from the cache.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.deps import authenticate
from gateway.errors import STORE_FAILURES, ApiError, store_failure_response
from gateway.runtime import Runtime

API_PREFIX = "/v1/"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() or None if scheme.lower() == "bearer" else None
    return None


class AuthenticateFirst:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") not in _BODY_METHODS
                or not str(scope.get("path", "")).startswith(API_PREFIX)):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await JSONResponse(status_code=401, content={"detail": "missing bearer token"})(scope, receive, send)
            return
        runtime: Runtime = scope["app"].state.runtime
        client = scope.get("client")
        try:
            async with runtime.db.sessions() as session:
                await authenticate(runtime, session, token, client[0] if client else None)
        except ApiError as refusal:
            await JSONResponse(status_code=refusal.status_code, content=refusal.body(),
                               headers=refusal.headers)(scope, receive, send)
            return
        except STORE_FAILURES as exc:
            # Outside the routes, so outside their exception handlers: answered as they would (503 when busy).
            await store_failure_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
