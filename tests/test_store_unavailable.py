"""The store out of connections or unreachable is a 503 with Retry-After (try again), never a 500."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.errors import install_error_handlers, store_failure_response
from store.agent_store import open_agent_store
from store.errors import StoreUnavailable
from tests.support import (
    POSTGRES_ADMIN_URL,
    create_postgres_database,
    drop_postgres_database,
    postgres_database_url,
)


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


@pytest.mark.parametrize("sqlstate", ["53300", "08006", "57P01", "40P01", "40001"])
def test_too_many_connections_a_lost_server_or_a_transaction_rolled_back_is_a_503_with_retry_after(
        sqlstate: str) -> None:
    """Out of connections, connection trouble, a server shutting down, a deadlock or a serialization failure the
    server broke by rolling the transaction back: nothing was done, and the same request may succeed later."""
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


def test_a_deadlock_postgresql_breaks_is_a_503_and_the_agents_store_calls_it_unavailable() -> None:
    """A real deadlock on the test server: two transactions each wait for the row the other updated, and the
    server rolls one back (SQLSTATE 40P01). Through SQLAlchemy (the gateway) it is a 503 with Retry-After; through
    asyncpg alone (the agents' store) it counts as the store unavailable for a moment, so the step is tried again."""

    async def run() -> tuple[DBAPIError, BaseException]:
        name = await create_postgres_database()
        if name is None:
            pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
        engine = create_async_engine(postgres_database_url(name))
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE seat (id int PRIMARY KEY, taken int)"))
                await connection.execute(text("INSERT INTO seat VALUES (1, 0), (2, 0)"))
            both_hold_one = asyncio.Barrier(2)

            async def take(first: int, then: int) -> None:
                async with engine.begin() as connection:
                    await connection.execute(text("UPDATE seat SET taken = 1 WHERE id = :id"), {"id": first})
                    await both_hold_one.wait()
                    await connection.execute(text("UPDATE seat SET taken = 1 WHERE id = :id"), {"id": then})

            through_sqlalchemy = [r for r in await asyncio.gather(take(1, 2), take(2, 1), return_exceptions=True)
                                  if r is not None]
            assert len(through_sqlalchemy) == 1 and isinstance(through_sqlalchemy[0], DBAPIError)

            import asyncpg
            dsn = postgres_database_url(name).replace("postgresql+asyncpg://", "postgresql://")
            connections = [await asyncpg.connect(dsn), await asyncpg.connect(dsn)]
            both_hold_one = asyncio.Barrier(2)

            async def take_plain(connection: asyncpg.Connection, first: int, then: int) -> None:
                async with connection.transaction():
                    await connection.execute("UPDATE seat SET taken = 2 WHERE id = $1", first)
                    await both_hold_one.wait()
                    await connection.execute("UPDATE seat SET taken = 2 WHERE id = $1", then)

            try:
                through_asyncpg = [r for r in await asyncio.gather(
                    take_plain(connections[0], 1, 2), take_plain(connections[1], 2, 1), return_exceptions=True)
                    if r is not None]
            finally:
                for connection in connections:
                    await connection.close()
            assert len(through_asyncpg) == 1
            return through_sqlalchemy[0], through_asyncpg[0]
        finally:
            await engine.dispose()
            await drop_postgres_database(name)

    gateways, agents = asyncio.run(run())
    response = store_failure_response(gateways)
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert getattr(agents, "sqlstate", None) == "40P01"
    agent_store = open_agent_store(postgres_database_url("unused"), linger_s=1, name="deadlock check")
    try:
        assert agent_store._unavailable(agents)  # type: ignore[attr-defined]
    finally:
        asyncio.run(agent_store.close())
