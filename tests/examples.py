"""How many examples a Hypothesis property gets.

`make test` runs each property with a fifth of its full count (at least 10): every property is exercised on
every run, and the examples differ from run to run (in CI they are derived from the test, `derandomize`).
`make fuzz` sets `WA_ROUTER_HYPOTHESIS=thorough` and runs every property with its full count.
"""

from __future__ import annotations

import os

THOROUGH = os.environ.get("WA_ROUTER_HYPOTHESIS", "") == "thorough"
# Hypothesis's own default, for the properties that name no count of their own.
DEFAULT_EXAMPLES = 100


def examples(full: int) -> int:
    """`full` in the thorough run, a fifth of it (at least 10) in `make test`."""
    return full if THOROUGH else max(10, full // 5)
