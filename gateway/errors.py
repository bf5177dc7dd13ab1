"""API errors: one shape for every refusal, and handlers so nothing surfaces as a bare 500."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from meta.unicode_safe import clean_text
from store.errors import LOCK_NOT_AVAILABLE, CustomersBusy, StoreUnavailable, means_unavailable, sqlstate_of

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal with a status and a message; `field` names the offending input (422 shape)."""

    def __init__(self, status_code: int, message: str, *, field: tuple[str | int, ...] | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.field = field
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        if self.field is not None:
            # Same shape as FastAPI's own validation errors, so clients parse one format.
            detail: Any = [{"loc": list(self.field), "msg": self.message, "type": "value_error"}]
        else:
            detail = self.message
        return {"detail": detail, **self.extra}


def field_error(field: tuple[str | int, ...], message: str, **extra: Any) -> ApiError:
    return ApiError(422, message, field=field, extra=extra or None)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


def too_many_failures(retry_after_s: int) -> ApiError:
    return ApiError(429, "too many failed authentications from this address; retry later",
                    headers={"Retry-After": str(retry_after_s)})


# A validation error echoes the offending value only when it is a short scalar: a 50 MB string must not
# come back as a 50 MB answer, and a value JSON cannot carry (a lone surrogate, NaN) must not become a 500.
_MAX_ECHOED_CHARS = 64
_MAX_MESSAGE_CHARS = 300


def _echoable(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 10**30
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= _MAX_ECHOED_CHARS and clean_text(value) == value


def _safe_text(value: Any, limit: int) -> str:
    text = clean_text(str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _without_null_branches(errors: Any) -> list[dict[str, Any]]:
    """A field that also accepts null (`X | None`) fails as a union: one entry per branch, each `loc` ending in
    the branch's tag (`["body", "role", "str-enum[Role]"]`, plus `["body", "role", "none"]`: "Input should be
    None"). Shown as the field's own error: the null branch's entry dropped, the tag left out of `loc`."""
    errors = [dict(e) for e in errors]
    nullable = {tuple(e.get("loc", ()))[:-1] for e in errors
                if e.get("type") == "none_required" and len(e.get("loc", ())) > 1}
    kept = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        field = next((p for p in nullable if loc[:len(p)] == p and len(loc) > len(p)), None)
        if field is None:
            kept.append(error)
        elif error.get("type") != "none_required":
            kept.append({**error, "loc": field + loc[len(field) + 1:]})
    # A null where null was the only failing branch (never the case for `X | None`) would leave nothing: keep all.
    return kept or errors


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 entries, keeping `loc`, `msg` and `type`, and `input` only when small and encodable."""
    detail = []
    for error in _without_null_branches(errors):
        entry: dict[str, Any] = {
            "loc": [part if isinstance(part, int) else _safe_text(part, _MAX_ECHOED_CHARS)
                    for part in error.get("loc", ())],
            "msg": _safe_text(error.get("msg", ""), _MAX_MESSAGE_CHARS),
            "type": _safe_text(error.get("type", ""), _MAX_ECHOED_CHARS),
        }
        if "input" in error and _echoable(error["input"]):
            entry["input"] = error["input"]
        detail.append(entry)
    return detail


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def unsupported_body_type(content_type: str | None, errors: Any) -> JSONResponse | None:
    """415 for a body sent without `Content-Type: application/json`, instead of FastAPI's 422 about a
    string that is not an object (it reads such a body as one string, whatever it holds)."""
    if _is_json(content_type):
        return None
    if not any(tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing" for e in errors):
        return None
    got = f"'{_safe_text(content_type, _MAX_ECHOED_CHARS)}'" if content_type else "none"
    return JSONResponse(status_code=415, content={"detail": [{
        "loc": ["header", "content-type"], "type": "unsupported_media_type",
        "msg": f"the body must be JSON sent with the header 'Content-Type: application/json' (got {got})"}]})


# What a caller is told when the store is busy or unreachable: the step did not happen; the same request may succeed
# in a moment (Meta redelivers a webhook answered so).
_UNAVAILABLE = {"detail": "store temporarily unavailable"}
_BUSY = {"detail": "store busy: no connection was free in time; retry shortly"}
_LOCKED = {"detail": "store busy: what this request needs is being written by another; retry shortly"}
STORE_FAILURES: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout, StoreUnavailable, CustomersBusy)


def _retry_later(content: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=503, content=content, headers={"Retry-After": "1"})


def store_failure_response(exc: Exception) -> JSONResponse:
    """The answer to a store failure (one of `STORE_FAILURES`: a conflict, a value the store refuses, the store busy
    or unavailable), for the exception handlers and for the middleware that reaches the store before the routes
    (`gateway.auth_first`), which those handlers do not cover."""
    if isinstance(exc, PoolTimeout):
        # Every connection of the gateway's pool stayed in use for `store_pool_timeout_s`: overload, not a crash.
        log.warning("store busy: %s", exc)
        return _retry_later(_BUSY)
    if isinstance(exc, CustomersBusy):
        # The intake waited its bound for customers another transaction is writing (`store_lock_wait_s`).
        log.warning("store busy: %s", exc)
        return _retry_later(_LOCKED)
    if isinstance(exc, StoreUnavailable):
        # Raised by an agent actor's store (plain SQL, no SQLAlchemy) and carried back through the Ray call.
        log.warning("store unavailable to an agent actor: %s", exc)
        return _retry_later(_UNAVAILABLE)
    assert isinstance(exc, DBAPIError)
    if isinstance(exc, IntegrityError):
        # A constraint the database enforces for us (a race the route did not foresee): a conflict.
        log.info("integrity conflict: %s", exc.orig)
        return JSONResponse(status_code=409, content={"detail": "conflicts with existing data"})
    sqlstate = sqlstate_of(exc)
    unavailable = isinstance(exc, OperationalError)  # SQLite locked past its wait, a connection refused or lost
    # SQLSTATE class 22 is a value the column cannot hold (PostgreSQL checks lengths, ranges, NUL
    # characters; asyncpg reports it as a plain DBAPIError, not DataError): bad input, not a crash.
    if not unavailable and (isinstance(exc, DataError) or sqlstate.startswith("22")):
        log.info("value refused by the store: %s", exc.orig)
        return JSONResponse(status_code=422, content={"detail": "a value is out of range for the store"})
    if sqlstate == LOCK_NOT_AVAILABLE:
        # Overload (or a long writer): the request waited its bound for a lock (`store_lock_wait_s`); nothing of it
        # was written.
        log.warning("store busy: %s", exc.orig)
        return _retry_later(_LOCKED)
    if unavailable or means_unavailable(sqlstate) or exc.connection_invalidated:
        # Connection trouble, the server out of connections or shutting down, or a connection found dead (the
        # pool replaces it): retry later.
        log.warning("store unavailable: %s", exc.orig)
        return _retry_later(_UNAVAILABLE)
    log.error("store error", exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal store error"})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = unsupported_body_type(request.headers.get("content-type"), exc.errors())
        if refused is not None:
            return refused
        return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def _dbapi(_request: Request, exc: DBAPIError) -> JSONResponse:
        return store_failure_response(exc)

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(_request: Request, exc: PoolTimeout) -> JSONResponse:
        return store_failure_response(exc)

    @app.exception_handler(OverflowError)
    async def _overflow(_request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite's driver raises this for integers beyond 64 bits (an id no row can have).
        log.info("integer out of range: %s", exc)
        return JSONResponse(status_code=422, content={"detail": "a number is out of range"})

    @app.exception_handler(CustomersBusy)
    async def _customers_busy(_request: Request, exc: CustomersBusy) -> JSONResponse:
        return store_failure_response(exc)

    @app.exception_handler(StoreUnavailable)
    async def _agent_store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return store_failure_response(exc)
