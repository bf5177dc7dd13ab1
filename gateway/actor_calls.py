"""API routes calling routing actors: a restart in progress is waited out, not surfaced at once.

Ray refuses a call submitted while an actor restarts ("the actor is restarting"), and an inbox that
is reloading its state answers 503 itself; either lasts a few seconds. Every call routed here is
safe to repeat: views, setting a value, and actions on a transaction, which are idempotent for the
agent who already did them (a repeated accept answers as the first did).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.directory import ActorUnavailable, call_while_unavailable
from gateway.errors import ApiError

# How long a call waits for a restarting actor before answering 503 (restarts take ~1-6 s).
RESTART_GRACE_S = 10.0


async def call_through_restart(proxy: Callable[[], Any], method: str, *args: Any, unavailable: str) -> Any:
    """A result dict with status 503 (an inbox reloading) is retried like an unavailable actor."""
    try:
        return await call_while_unavailable(proxy, method, *args, within_s=RESTART_GRACE_S, again=_reloading)
    except ActorUnavailable as exc:
        raise ApiError(503, unavailable) from exc


def _reloading(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") == 503
