"""API errors: one shape for every refusal, and handlers so nothing surfaces as a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from store.errors import StoreUnavailable, means_unavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal with a status and a message; `field` names the offending input (422 shape)."""

    def __init__(self, status_code: int, message: str, *, field: tuple[str | int, ...] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.field = field
        self.extra = extra or {}

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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body())

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        # A constraint the database enforces for us (a race the route did not foresee): a conflict.
        log.info("integrity conflict: %s", exc.orig)
        return JSONResponse(status_code=409, content={"detail": "conflicts with existing data"})

    @app.exception_handler(DBAPIError)
    async def _dbapi(_request: Request, exc: DBAPIError) -> JSONResponse:
        # SQLSTATE class 22 is a value the column cannot hold (PostgreSQL checks lengths, ranges, NUL
        # characters; asyncpg reports it as a plain DBAPIError, not DataError): bad input, not a crash.
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        if isinstance(exc, DataError) or sqlstate.startswith("22"):
            log.info("value refused by the store: %s", exc.orig)
            return JSONResponse(status_code=422, content={"detail": "a value is out of range for the store"})
        if means_unavailable(sqlstate):
            # Connection trouble, the server out of connections or shutting down: retry later.
            log.warning("store unavailable: %s", exc.orig)
            return JSONResponse(status_code=503, content={"detail": "store temporarily unavailable"},
                                headers={"Retry-After": "1"})
        log.error("store error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal store error"})

    @app.exception_handler(OverflowError)
    async def _overflow(_request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite's driver raises this for integers beyond 64 bits (an id no row can have).
        log.info("integer out of range: %s", exc)
        return JSONResponse(status_code=422, content={"detail": "a number is out of range"})

    @app.exception_handler(StoreUnavailable)
    async def _agent_store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Raised by an agent actor's store (plain SQL, no SQLAlchemy) and carried back through the Ray call.
        log.warning("store unavailable to an agent actor: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "store temporarily unavailable"},
                            headers={"Retry-After": "1"})

    @app.exception_handler(OperationalError)
    async def _operational(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("store unavailable: %s", exc.orig)
        return JSONResponse(status_code=503, content={"detail": "store temporarily unavailable"},
                            headers={"Retry-After": "1"})
