"""Failed authentications limited per client address: guessing tokens costs a minute per few tries.

Only a presented token that names no one counts (a missing header is no guess). Once an address has
failed `limit` times within a minute, it is refused (429, with Retry-After) before its tokens are even
looked up, until the oldest failure is a minute old. Per gateway process, in memory.
"""

from __future__ import annotations

import math
import time
from collections import deque

WINDOW_S = 60.0
_MAX_ADDRESSES = 10_000


class AuthThrottle:
    def __init__(self, limit_per_minute: int) -> None:
        self._limit = limit_per_minute
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str | None) -> int | None:
        """Seconds until `address` may try again; None when it may now (or limiting is off)."""
        if self._limit <= 0 or address is None:
            return None
        failures = self._recent(address, time.monotonic())
        if failures is None or len(failures) < self._limit:
            return None
        return max(1, math.ceil(failures[0] + WINDOW_S - time.monotonic()))

    def failed(self, address: str | None) -> None:
        if self._limit <= 0 or address is None:
            return
        now = time.monotonic()
        failures = self._recent(address, now)
        if failures is None:
            if len(self._failures) >= _MAX_ADDRESSES:  # many addresses: forget the quietest half-way
                self._failures = {a: f for a, f in self._failures.items() if len(f) >= self._limit}
            failures = self._failures[address] = deque()
        failures.append(now)
        while len(failures) > self._limit:
            failures.popleft()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - WINDOW_S:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
