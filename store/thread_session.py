"""An async step written against a session, run whole in a SQLite write thread (`Database.write_session`).

The intake's store code (customers, messages, statuses) is written once, against `AsyncSession`. On
file-backed SQLite, `Database.write_session` runs it in a worker thread on a synchronous session
behind the same methods: its awaits never suspend, so the coroutine runs to its end in one go,
holding SQLite's write lock only for its statements and never across the gateway's event loop.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, CursorResult, Result, ScalarResult
from sqlalchemy.orm import Session


class ThreadConnection:
    """The session's connection behind `AsyncConnection.execute` (no await suspends)."""

    def __init__(self, connection: Connection) -> None:
        self.sync_connection = connection

    async def execute(self, statement: Any, parameters: Any = None) -> CursorResult[tuple[Any, ...]]:
        return self.sync_connection.execute(statement, parameters)


class ThreadSession:
    """The `AsyncSession` methods the store's write steps use, done synchronously (no await suspends)."""

    def __init__(self, session: Session) -> None:
        self.sync_session = session

    @property
    def bind(self) -> Any:
        return self.sync_session.bind

    def get_bind(self) -> Any:
        return self.sync_session.get_bind()

    async def connection(self) -> ThreadConnection:
        return ThreadConnection(self.sync_session.connection())

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    async def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Result[Any]:
        return self.sync_session.execute(statement, params, **kwargs)

    async def scalars(self, statement: Any, params: Any = None, **kwargs: Any) -> ScalarResult[Any]:
        return self.sync_session.scalars(statement, params, **kwargs)

    async def scalar(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self.sync_session.scalar(statement, params, **kwargs)

    async def get(self, entity: Any, ident: Any, **kwargs: Any) -> Any:
        return self.sync_session.get(entity, ident, **kwargs)

    async def flush(self, objects: Any = None) -> None:
        self.sync_session.flush(objects)

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)
