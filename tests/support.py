"""Test helpers: a typed client for the gateway's HTTP API and a scenario builder on the Meta simulator."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from meta.simulator import payloads
from meta.simulator.state import SimulatorState
from meta.simulator.webhook_sender import WebhookSender

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def waba_id() -> str:
    # Meta's ids are digits; keep them unique across the whole test session.
    return str(10**15 + int(uuid.uuid4().int % 10**14))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Gateway:
    url: str
    admin_token: str
    simulator: SimulatorState
    simulator_url: str
    database_url: str
    namespace: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers.update(auth(token))
        return self.http.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, token: str | None, expected: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, token, **kwargs)
        assert response.status_code == expected, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def items(self, path: str, token: str | None, *, page_size: int | None = None, **params: Any) -> list[Any]:
        """Every item of a paged list, following next_cursor to the last page."""
        found: list[Any] = []
        cursor: str | None = None
        while True:
            query = dict(params)
            if page_size is not None:
                query["limit"] = page_size
            if cursor is not None:
                query["cursor"] = cursor
            page = self.ok("GET", path, token, params=query)
            assert set(page) == {"items", "next_cursor"}, f"GET {path}: not a page: {page}"
            found += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return found


@dataclass
class Org:
    gateway: Gateway
    id: int
    owner_id: int
    owner_token: str
    waba_id: str = ""
    app_secret: str = ""
    access_token: str = ""
    numbers: list[str] = field(default_factory=list)

    def path(self, suffix: str = "") -> str:
        return f"/v1/orgs/{self.id}{suffix}"

    def add_user(self, role: str = "member", licenses: list[str] | None = None,
                 name: str | None = None) -> tuple[int, str]:
        if licenses is None:
            licenses = ["phone_system", "contact_center_whatsapp"]
        body = {"name": name or unique("user"), "email": f"{unique('u')}@example.com", "role": role,
                "licenses": licenses}
        created = self.gateway.ok("POST", self.path("/users"), self.owner_token, 201, json=body)
        return int(created["id"]), str(created["token"])

    def sender(self) -> WebhookSender:
        return WebhookSender(f"{self.gateway.url}/webhooks/whatsapp/{self.id}", self.app_secret)


def create_org(gateway: Gateway, name: str | None = None) -> Org:
    created = gateway.ok("POST", "/v1/orgs", gateway.admin_token, 201, json={
        "name": name or unique("org"),
        "owner": {"name": "Owner", "email": f"{unique('owner')}@example.com"},
    })
    return Org(gateway=gateway, id=created["id"], owner_id=created["owner"]["id"],
               owner_token=created["owner"]["token"])


def add_simulated_waba(gateway: Gateway, numbers: int = 2) -> tuple[str, str, str, list[str]]:
    """A new WABA in the simulator: (waba_id, access_token, app_secret, phone_number_ids)."""
    wid = waba_id()
    token = unique("EAAG")
    secret = unique("secret")
    phone_ids = [str(10**14 + int(uuid.uuid4().int % 10**13)) for _ in range(numbers)]
    gateway.simulator.add_waba(wid, f"Business {wid[-4:]}", token, secret,
                               [(pid, f"+1 555 {pid[-7:]}", f"Number {i + 1}") for i, pid in enumerate(phone_ids)])
    return wid, token, secret, phone_ids


def link_waba(org: Org, waba: tuple[str, str, str, list[str]]) -> dict[str, Any]:
    org.waba_id, org.access_token, org.app_secret, org.numbers = waba
    result: dict[str, Any] = org.gateway.ok("POST", org.path("/whatsapp/accounts"), org.owner_token, 201, json={
        "waba_id": org.waba_id, "access_token": org.access_token, "app_secret": org.app_secret})
    return result


def org_with_waba(gateway: Gateway, numbers: int = 2) -> Org:
    org = create_org(gateway)
    link_waba(org, add_simulated_waba(gateway, numbers))
    return org


def text_from(org: Org, number_index: int, customer: str | None, text: str = "hello",
              name: str = "Customer", *, user_id: str | None = None, username: str | None = None) -> dict[str, Any]:
    """A text from phone number `customer` and/or business-scoped user id `user_id` (None: not sent)."""
    phone_id = org.numbers[number_index]
    return payloads.inbound_message(org.waba_id, phone_id, f"+1 555 {phone_id[-7:]}", customer, name,
                                    type="text", body=text, user_id=user_id, username=username)


def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll a condition in a test (the system under test itself is event-driven)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: last={last!r}")


# ---- store inspection and error-shape helpers (foundation acceptance tests) ----------------------


def query_db(gateway: Gateway, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a raw SQL query on the gateway's store: to check what was, or was not, written."""
    import asyncio

    from sqlalchemy import text

    from store.db import Database

    async def run() -> list[tuple[Any, ...]]:
        db = Database(gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                return [tuple(row) for row in (await session.execute(text(sql), params)).all()]
        finally:
            await db.dispose()

    return asyncio.run(run())


def error_locs(response: httpx.Response) -> list[list[Any]]:
    """The `loc` of every entry of a 422 body (FastAPI's shape, also used by the API's own refusals)."""
    detail = response.json().get("detail")
    return [list(item.get("loc", [])) for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []


def assert_invalid(response: httpx.Response, *loc: str | int) -> None:
    """A 422 that names the offending field by its full location, e.g. ("body", "reassign_after_s")."""
    assert response.status_code == 422, f"expected 422 for {list(loc)}: {response.status_code} {response.text}"
    assert list(loc) in error_locs(response), f"422 does not name {list(loc)}: {response.text}"


# ---- PostgreSQL databases of the test-suite (created and dropped by the tests) --------------------

POSTGRES_ADMIN_URL = os.environ.get("WA_ROUTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def create_postgres_database() -> str | None:
    """A fresh, empty database on the test server; None when no server answers."""
    import asyncpg

    name = f"wa_router_test_{uuid.uuid4().hex[:10]}"
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_postgres_database(name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def postgres_database_url(name: str) -> str:
    """The SQLAlchemy (asyncpg) URL of database `name` on the test server."""
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"
