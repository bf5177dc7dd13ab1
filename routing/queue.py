"""Ordering of an inbox's FIFO wait queue."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

__all__ = ["queue_order"]


def queue_order(items: Iterable[tuple[int, datetime]]) -> list[int]:
    """Transaction ids oldest first; equal ``waiting_since`` falls back to ascending id.

    ``items`` are ``(tx_id, waiting_since)`` pairs; the id tie-break keeps the order
    total and deterministic when several messages land in the same instant.
    """
    return [tx_id for tx_id, _ in sorted(items, key=lambda item: (item[1], item[0]))]
