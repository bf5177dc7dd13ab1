"""The store's clock and its UTC datetimes (a module of its own: agent actors use it without SQLAlchemy)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime as a UTC column stores it; a naive one is refused (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


def from_stored(value: datetime) -> datetime:
    """A UTC column's value as read back, timezone-aware (SQLite drops the zone on the way)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
