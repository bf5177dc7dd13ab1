"""The agent actor's store: its few statements as plain SQL on the database drivers, without SQLAlchemy.

Agents are the many processes (one Ray actor each). SQLAlchemy, its ORM and the store's mapped tables
cost ~26 MiB in every one of them, against ~48 MiB for an empty Ray actor, so an agent's process loads
only a driver (`sqlite3`, or `asyncpg` for PostgreSQL) and the statements below. They act on the tables
of `store.tables` and write values as SQLAlchemy writes them there (UTC datetimes, JSON text), so the
gateway and the inboxes read an agent's rows through the ORM unchanged (tests/test_agent_store.py checks
both ways, on both backends).

Each step is written once (`store.agent_store_steps`), as a coroutine against one transaction; this module
picks the backend that runs it: `store.agent_store_sqlite` (a worker thread of the agent) or
`store.agent_store_postgres` (an asyncpg connection, in a shared store actor or in the agent).
"""

from __future__ import annotations

from store.agent_store_postgres import POSTGRES_CONNECTIONS, PostgresAgentStore
from store.agent_store_sqlite import SqliteAgentStore
from store.agent_store_steps import AgentStore
from store.sqlite_file import sqlite_file_path


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


def open_agent_store(url: str, *, linger_s: float, name: str, connections: int = POSTGRES_CONNECTIONS,
                     keep: int = 1) -> AgentStore:
    """The store at a `WA_ROUTER_DATABASE_URL`. PostgreSQL: at most `connections` at once, named `name`
    (`application_name`); up to `keep` are kept between steps, each closed once unused for `linger_s` (0: a
    connection per step)."""
    if url.startswith("sqlite"):
        path = sqlite_file_path(url)
        if path is None:
            raise ValueError("an agent actor needs the store's file: an in-memory SQLite database is the gateway's own")
        return SqliteAgentStore(path)
    if is_postgres(url):
        return PostgresAgentStore(url, linger_s=linger_s, name=name, connections=connections, keep=keep)
    raise ValueError(f"agent actors support SQLite and PostgreSQL, not {url.split(':', 1)[0]}")
