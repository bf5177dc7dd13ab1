"""The store's clock: timezone-aware UTC (a module of its own: agent actors use it without SQLAlchemy)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
