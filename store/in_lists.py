"""Values for a statement's `IN (...)` list, a few hundred at a time: far below SQLite's and PostgreSQL's limits on
bound parameters, whatever the number of values (no SQLAlchemy: agent processes use it too)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_LIST_MAX = 500


def in_batches(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """`values` in order, IN_LIST_MAX at a time."""
    for start in range(0, len(values), IN_LIST_MAX):
        yield values[start:start + IN_LIST_MAX]
