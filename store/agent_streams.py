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

LOCK_STREAMS = select(AgentState.user_id).where(AgentState.user_id.in_(bindparam("agents", expanding=True))) \
    .order_by(AgentState.user_id).with_for_update()
APPEND_EVENTS = insert(AgentEvent)
_CHAT_ENDED = update(AgentState).where(AgentState.user_id == bindparam("agent")) \
    .values(last_chat_end_at=bindparam("at"))

# (user id, event kind, payload)
StreamEvent = tuple[int, str, dict[str, Any]]


def append_to_streams(connection: Connection, org_id: int, events: Sequence[StreamEvent], at: datetime) -> None:
    """Append each event to its agent's stream, in the order given (the caller's transaction commits them)."""
    if not events:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(LOCK_STREAMS, {"agents": sorted({user_id for user_id, _, _ in events})})
    connection.execute(APPEND_EVENTS, [{"org_id": org_id, "user_id": user_id, "kind": kind, "payload": payload,
                                  "created_at": at} for user_id, kind, payload in events])


def chat_ended(connection: Connection, user_id: int, at: datetime) -> None:
    """The agent's conversation ended at `at` (closed, or transferred away): its idle time (Longest Idle) counts
    from then."""
    connection.execute(_CHAT_ENDED, {"agent": user_id, "at": at})


def work_left(connection: Connection, org_id: int, user_id: int, transaction_id: int, inbox_id: int, reason: str,
              at: datetime) -> None:
    """A conversation leaves its agent (`reason` "closed", or "transferred" away): the event on the agent's stream,
    and its idle time counting from `at`."""
    append_to_streams(connection, org_id, [work_ended(user_id, transaction_id, inbox_id, reason)], at)
    chat_ended(connection, user_id, at)


def work_ended(user_id: int, transaction_id: int, inbox_id: int, reason: str) -> StreamEvent:
    """The event of a conversation leaving its agent: `reason` "closed", or "transferred" away."""
    kind = "transaction_closed" if reason == "closed" else "transferred"
    return (user_id, kind, {"transaction_id": transaction_id, "inbox_id": inbox_id, "reason": reason,
                            "direction": "away" if kind == "transferred" else None})


def work_started(user_id: int, kind: str, summary: dict[str, Any], offer_id: str) -> StreamEvent:
    """The event of a conversation becoming the agent's (`kind`: accepted, claimed, transferred, assigned): what
    it is shown of it (`TxState.summary`), with its first message."""
    return (user_id, "transferred" if kind == "transferred" else "assigned",
            {**summary, "kind": kind, "offer_id": offer_id})


def message_shown(user_id: int, transaction_id: int, message: dict[str, Any]) -> StreamEvent:
    """The event of a customer's message shown with the agent's conversation."""
    return (user_id, "message", {"transaction_id": transaction_id, "inbox_id": message["inbox_id"],
                                 "message": message})
