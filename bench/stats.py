"""Small statistics helpers shared by the harness's processes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p99 / max in milliseconds (rounded to 0.1 ms) and the count."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {"p50": ms(percentile(seconds, 50)), "p99": ms(percentile(seconds, 99)),
            "max": ms(max(seconds) if seconds else None), "count": len(seconds)}
