"""Events an inbox writes on its agents' streams in its own commit: the offer it makes, the assignment, the close.

The event then lands with the change it shows, in one transaction: the agent writes nothing for it, and reads
it from the stream when the inbox tells it (`actors.agent_actor`). Nothing can come between the change and its
event (a close after an assignment, say), so the stream never shows one without the other.

On PostgreSQL every writer of a stream locks the agent's state row first (sorted by user, as every writer
does), so a stream's ids commit in id order and a reader that saw an id never meets a smaller one later.
SQLite's writers take turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from store.tables import AgentEvent, AgentState

_LOCK = select(AgentState.user_id).where(AgentState.user_id.in_(bindparam("agents", expanding=True))) \
    .order_by(AgentState.user_id).with_for_update()
_APPEND = insert(AgentEvent)
_CHAT_ENDED = update(AgentState).where(AgentState.user_id == bindparam("agent")) \
    .values(last_chat_end_at=bindparam("at"))

# (user id, event kind, payload)
StreamEvent = tuple[int, str, dict[str, Any]]


def append_to_streams(connection: Connection, org_id: int, events: Sequence[StreamEvent], at: datetime) -> None:
    """Append each event to its agent's stream, in the order given (the caller's transaction commits them)."""
    if not events:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_LOCK, {"agents": sorted({user_id for user_id, _, _ in events})})
    connection.execute(_APPEND, [{"org_id": org_id, "user_id": user_id, "kind": kind, "payload": payload,
                                  "created_at": at} for user_id, kind, payload in events])


def work_ended(connection: Connection, org_id: int, user_id: int, transaction_id: int, inbox_id: int, reason: str,
               at: datetime) -> None:
    """A conversation left its agent (`reason` "closed", or "transferred" away): the stream shows it, and the agent's
    idle time (Longest Idle) counts from `at`."""
    kind = "transaction_closed" if reason == "closed" else "transferred"
    append_to_streams(connection, org_id, [(user_id, kind, {
        "transaction_id": transaction_id, "inbox_id": inbox_id, "reason": reason,
        "direction": "away" if kind == "transferred" else None})], at)
    connection.execute(_CHAT_ENDED, {"agent": user_id, "at": at})
