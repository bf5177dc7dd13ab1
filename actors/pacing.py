"""Pure pacing for the outbound sender: per-number throughput, the pair limit, retry back-off."""

from __future__ import annotations

import random


class RateGate:
    """Evenly spaced send slots at `rate` per second: each reservation takes the next free slot."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    def reserve(self, now: float) -> float:
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        return slot


class PairGate:
    """Meta's pair limit: at most one message per `interval_s` to the same customer from one number."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next: dict[str, float] = {}

    def ready_at(self, recipient: str) -> float:
        return self._next.get(recipient, 0.0)

    def sent(self, recipient: str, at: float) -> None:
        self._next[recipient] = at + self.interval_s


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential back-off with full jitter (AWS's scheme): uniform in [base/2, min(max, base·2^(n-1))]."""
    ceiling = min(max_s, base_s * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(min(base_s / 2, ceiling), ceiling)
