"""Python's garbage collector tuned for long-lived server processes (the gateway and the routing actors).

What start-up loaded (FastAPI, SQLAlchemy, Ray's modules, the actor's loaded state) lives as long as the
process; `gc.freeze()` moves it out of the collector's reach, so the full collections that the many
short-lived objects of each request or call trigger no longer walk it. The gateway and the inboxes also make
young collections rarer: each request or routing step allocates thousands of containers, and at CPython's
default (a young collection every 700 net allocations) they run several times per message. Agents keep the
default: they are the many processes, and a larger young generation is memory in each.
"""

from __future__ import annotations

import gc

# Net container allocations between young collections, for the processes that do most of the work.
BUSY_PROCESS_GEN0_THRESHOLD = 10_000

_tuned = False


def tune_after_start_up(busy: bool) -> None:
    """Once per process, when start-up is over: freeze what it loaded; `busy`: rarer young collections."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()  # start-up's garbage goes now, not frozen with the rest
    gc.freeze()
    if busy:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(BUSY_PROCESS_GEN0_THRESHOLD, older, oldest)
