"""Dialect-aware INSERT ... ON CONFLICT, so idempotency is decided by the database, not by a prior read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from store.core_connection import core_connection
from store.tables import Base


def _dialect_of(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


def _insert(dialect: str, model: type[Base]) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(model)


# Statements built once per shape (building one costs more than running it). `index_where` is keyed by its id (a
# SQL expression compares by building another one), the expression kept with the statement so the id stays its own.
_IGNORING_DUPLICATES: dict[tuple[Any, ...], tuple[ColumnElement[bool] | None, Insert]] = {}


async def insert_ignoring_duplicates(session: AsyncSession, model: type[Base], rows: Sequence[dict[str, Any]],
                                     *, conflict_on: Sequence[str], returning: Sequence[str] = ("id",),
                                     index_where: ColumnElement[bool] | None = None) -> list[Any]:
    """Insert rows, silently skipping those that collide on `conflict_on`; return the inserted rows.

    `index_where` names the predicate of a partial unique index (e.g. `user_id IS NOT NULL`), best a module
    constant: its statement is then built once."""
    if not rows:
        return []
    key = (_dialect_of(session), model, tuple(conflict_on), tuple(returning), id(index_where))
    cached = _IGNORING_DUPLICATES.get(key)
    if cached is not None and cached[0] is index_where:
        statement = cached[1]
    else:
        table = model.__table__
        # The rows go as parameters, not into the statement: a statement holding them (a JSON value is a dict)
        # has no cache key, so it would be compiled again for every delivery.
        statement = _insert(key[0], model).on_conflict_do_nothing(
            index_elements=list(conflict_on), index_where=index_where
        ).returning(*(table.c[name] for name in returning))  # type: ignore[attr-defined]
        _IGNORING_DUPLICATES[key] = (index_where, statement)
    return list((await (await core_connection(session)).execute(statement, list(rows))).all())


def upsert_statement(dialect: str, model: type[Base], rows: Sequence[dict[str, Any]], *, key: Sequence[str]) -> Any:
    """INSERT the rows or, on a key collision, overwrite the non-key columns given (`rows` not empty)."""
    statement = _insert(dialect, model).values(list(rows))
    updates = {name: statement.excluded[name] for name in rows[0] if name not in key}
    return statement.on_conflict_do_update(index_elements=list(key), set_=updates)


async def upsert(session: AsyncSession, model: type[Base], rows: Sequence[dict[str, Any]], *,
                 key: Sequence[str]) -> None:
    """Insert rows or, on a key collision, overwrite the non-key columns given."""
    if rows:
        await session.execute(upsert_statement(_dialect_of(session), model, rows, key=key))
