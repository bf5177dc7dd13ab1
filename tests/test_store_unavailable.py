"""The store out of connections or unreachable is a 503 with Retry-After (try again), never a 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway.errors import install_error_handlers
from store.errors import StoreUnavailable


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def client_raising(sqlstate: str) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    async def fail() -> None:
        raise DBAPIError("SELECT 1", {}, DriverError(sqlstate))

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("sqlstate", ["53300", "08006", "57P01"])
def test_too_many_connections_or_a_lost_server_is_a_503_with_retry_after(sqlstate: str) -> None:
    response = client_raising(sqlstate).get("/")
    assert response.status_code == 503
    assert response.json() == {"detail": "store temporarily unavailable"}
    assert response.headers["retry-after"] == "1"


def test_a_connection_found_dead_is_a_503_whatever_the_driver_says() -> None:
    """A pooled connection whose server end went away (a restart) can fail with a driver error that has no SQLSTATE
    (asyncpg: "cannot switch to state 15"); SQLAlchemy marks it as a disconnect and drops the pool's connections."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    async def fail() -> None:
        raise DBAPIError("SELECT 1", {}, RuntimeError("cannot switch to state 15"), connection_invalidated=True)

    response = TestClient(app, raise_server_exceptions=False).get("/")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")


def test_a_value_the_store_cannot_hold_stays_a_422_and_anything_else_a_500() -> None:
    assert client_raising("22001").get("/").status_code == 422
    assert client_raising("XX000").get("/").status_code == 500


def test_an_agent_actors_store_unavailable_is_a_503_too() -> None:
    """Agents reach the store without SQLAlchemy (`store.agent_store`); their connection trouble reaches
    the gateway through the Ray call as `StoreUnavailable`."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    async def fail() -> None:
        raise StoreUnavailable("PostgreSQL: too many clients already")

    response = TestClient(app, raise_server_exceptions=False).get("/")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"detail": "store temporarily unavailable"}


def test_a_constraint_the_store_enforces_is_a_409_and_sqlites_lock_past_its_wait_a_503() -> None:
    """Both through the one mapping of store failures (`gateway.errors.store_failure_response`): a race a route did
    not foresee is a conflict; an OperationalError is the store unavailable, whatever its SQLSTATE."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise IntegrityError("INSERT", {}, DriverError("23505"))

    @app.get("/locked")
    async def locked() -> None:
        raise OperationalError("INSERT", {}, DriverError("22000"))

    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/conflict")
    assert (response.status_code, response.json()) == (409, {"detail": "conflicts with existing data"})
    response = client.get("/locked")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
