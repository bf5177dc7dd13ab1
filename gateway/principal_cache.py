"""Who a token stands for, kept a few seconds: every API call resolves its token.

This gateway forgets everything as soon as a user is changed or deleted, or a token issued or revoked
through it (`invalidate`); the TTL bounds how long another gateway of the cluster still honours a
token, role or licence that changed there. Unknown tokens are never kept (a new token works at once).
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")

_MAX_ENTRIES = 10_000


class TokenCache(Generic[T]):
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, T]] = {}
        # Bumped by invalidate(): a lookup that started before it must not store what it read.
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, token_hash: str) -> T | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[token_hash]
            return None
        return entry[1]

    def put(self, token_hash: str, value: T, generation: int, valid_for_s: float | None = None) -> None:
        """Keep `value`, read while the cache was at `generation` (dropped if invalidated since), for the
        TTL or `valid_for_s` (a token that expires sooner), whichever is shorter."""
        ttl_s = self._ttl_s if valid_for_s is None else min(self._ttl_s, valid_for_s)
        if ttl_s <= 0 or generation != self._generation:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic() + ttl_s, value)

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()
