"""The store out of connections or unreachable is a 503 with Retry-After (try again), never a 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from gateway.errors import install_error_handlers


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


def test_a_value_the_store_cannot_hold_stays_a_422_and_anything_else_a_500() -> None:
    assert client_raising("22001").get("/").status_code == 422
    assert client_raising("XX000").get("/").status_code == 500
