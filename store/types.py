"""Column types shared by every table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from store.clock import as_utc, from_stored
from store.clock import utcnow as utcnow  # re-exported: the store's modules take it from here

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone on the way back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else from_stored(value)


def storable(value: str | None, length: int | None = None) -> str | None:
    """Text PostgreSQL accepts (no NUL characters; even a bound WHERE parameter may not hold one), cut to fit."""
    if value is None:
        return None
    clean = value.replace("\x00", "")
    return clean if length is None else clean[:length]
