"""SQLite writers of every process take turns through a lock file instead of SQLite's busy handler.

SQLite has one writer at a time; the gateway and every actor process write to the same file. A
writer that finds the lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, ... up to
100 ms between tries: under load the lock is often free while every waiter sleeps (measured: a
webhook waited up to 2.5 s for it at 20 msg/s with 51 agents). Here each write transaction first
takes an exclusive `flock` on `<database>.writers` and lets it go at its commit or rollback; a
waiter blocks in the kernel, which wakes it the moment the lock is free.

The turn is taken where SQLite prepares the transaction's first write statement (an authorizer
callback, in the connection's own thread; the statement cache is off so every statement is
prepared), and released by the dialect's commit, rollback, close and terminate (on the synchronous
engine of `Database.read`, by the caller after each transaction: `take_turns_when_writing`). A process that
dies releases it with its file descriptors. A turn not granted within `wait_s` is given up: the
transaction goes on under SQLite's own locking (busy_timeout), never worse than without this.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

from store.sqlite_file import WriterTurn, lock_path_of


def take_turns(engine: AsyncEngine, database_path: str, wait_s: float) -> None:
    """Make every connection of `engine` take a writer's turn (see the module's docstring)."""
    lock_path = lock_path_of(database_path)
    # Keyed by aiosqlite's connection object: the pool passes its proxy to some dialect calls and
    # the adapted connection to others; both lead to it.
    turns: weakref.WeakKeyDictionary[Any, WriterTurn] = weakref.WeakKeyDictionary()

    def aiosqlite_connection(connection: Any) -> Any:
        raw = getattr(connection, "dbapi_connection", connection)  # a pool proxy's raw connection
        return getattr(raw, "_connection", None)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        turn = WriterTurn(lock_path, wait_s)
        aio = dbapi_connection._connection
        # sqlite3 objects belong to the thread that made them: set the authorizer from aiosqlite's thread.
        await_(aio._execute(aio._conn.set_authorizer, turn.authorize))
        turns[aio] = turn
        weakref.finalize(aio, turn.release)  # a connection dropped without close still lets go

    def releasing(call: Any) -> Any:
        def wrapped(connection: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return call(connection, *args, **kwargs)
            finally:
                aio = aiosqlite_connection(connection)
                turn = turns.get(aio) if aio is not None else None
                if turn is not None:
                    turn.release()
        return wrapped

    event.listen(engine.sync_engine, "connect", on_connect)
    dialect = engine.sync_engine.dialect
    for name in ("do_commit", "do_rollback", "do_close", "do_terminate"):
        setattr(dialect, name, releasing(getattr(dialect, name)))


_TURN_KEY = "wa_router_writer_turn"


def take_turns_when_writing(engine: Engine, database_path: str, wait_s: float) -> None:
    """A synchronous engine's connections take a writer's turn at their first write statement, like
    `take_turns`; the caller, which ends each transaction itself, lets it go after the commit or
    rollback with `turn_of(connection).release()` (before the connection goes back to the pool)."""
    lock_path = lock_path_of(database_path)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        turn = WriterTurn(lock_path, wait_s)
        dbapi_connection.set_authorizer(turn.authorize)
        record.info[_TURN_KEY] = turn

    event.listen(engine, "connect", on_connect)


def turn_of(connection: Connection) -> WriterTurn:
    """The writer's turn of a connection of an engine set up by `take_turns_when_writing`."""
    turn: WriterTurn = connection.connection.info[_TURN_KEY]
    return turn
