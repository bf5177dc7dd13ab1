"""A pooled PostgreSQL connection is checked with a ping only when it has been idle a while.

SQLAlchemy's `pool_pre_ping` pings at every checkout: with asyncpg that is three round trips (BEGIN, an empty
query, ROLLBACK), under the benchmark's load 1.8 pings per message, a quarter of all round trips to the server.
What a ping guards against (a server restarted, a connection closed by an idle timeout or a middlebox) befalls
connections that sat unused; one used a moment ago is trusted. Should it have died since all the same, its step
fails as a step whose connection dies mid-way always could (the caller sees the store unavailable and retries),
and the pool drops every connection older than the failure.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine

# Connections unused for longer than this are pinged before use.
PING_AFTER_IDLE_S = 10.0

_IDLE_SINCE = "wa_router_idle_since"


def ping_idle_connections(engine: AsyncEngine) -> None:
    """Have `engine`'s pool ping a connection at checkout only when it has been idle `PING_AFTER_IDLE_S` or more;
    a dead one makes the pool drop its connections and open a new one (three attempts, as the pre-ping's)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _idle_from_now(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)  # none yet: a connection just opened
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise exc.InvalidatePoolError(f"a connection idle for {time.monotonic() - idle_since:.0f}s is gone: "
                                          f"{error}") from error
