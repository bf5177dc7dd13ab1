"""Events an inbox writes on its agents' streams in its own commit: the offer it makes, the assignment, the close.

The event then lands with the change it shows, in one transaction: the agent writes nothing for it, and takes it
when the inbox tells it (`actors.agent_offers`). Nothing can come between the change and its
event (a close after an assignment, say), so the stream never shows one without the other.

On PostgreSQL every writer of a stream locks the agent's state row first (sorted by user, as every writer
does), so a stream's ids commit in id order and a reader that saw an id never meets a smaller one later.
SQLite's writers take turns.

A writer hands each agent the events it appended, each linked to the event before it on the stream
(`LinkedEvent`): the agent takes them into memory without reading its stream when the first link meets the
newest event it knows, and reads the stream only when it does not (another writer's tell is still on its way,
or was lost).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, insert, literal_column, select, update
from sqlalchemy.sql.dml import ReturningInsert

from store.agent_store_steps import LinkedEvent, Told
from store.tables import AgentEvent, AgentState

LOCK_STREAMS = select(AgentState.user_id).where(AgentState.user_id.in_(bindparam("agents", expanding=True))) \
    .order_by(AgentState.user_id).with_for_update()
# Each appended event's id, its agent and the id of the event before it on that agent's stream as the statement
# found it (on PostgreSQL the statement does not see its own rows: the first of an agent's events gets the right
# one, and the others follow it, `link_appended`). The writer holds the stream's lock: nothing comes between.
APPEND_EVENTS: ReturningInsert[int, int, int] = insert(AgentEvent).returning(
    AgentEvent.id, AgentEvent.user_id, literal_column(
        "(SELECT max(earlier.id) FROM agent_events AS earlier "
        "WHERE earlier.user_id = agent_events.user_id AND earlier.id < agent_events.id)", BigInteger))
_CHAT_ENDED = update(AgentState).where(AgentState.user_id == bindparam("agent")) \
    .values(last_chat_end_at=bindparam("at"))

# (user id, event kind, payload)
StreamEvent = tuple[int, str, dict[str, Any]]


def append_to_streams(connection: Connection, org_id: int, events: Sequence[StreamEvent], at: datetime) -> Told:
    """Append each event to its agent's stream, in the order given (the caller's transaction commits them)."""
    if not events:
        return {}
    if connection.dialect.name == "postgresql":
        connection.execute(LOCK_STREAMS, {"agents": sorted({user_id for user_id, _, _ in events})})
    appended = connection.execute(APPEND_EVENTS, rows_of(org_id, events, at)).all()
    return link_appended(events, appended, at)


def rows_of(org_id: int | Sequence[int], events: Sequence[StreamEvent], at: datetime) -> list[dict[str, Any]]:
    """The `agent_events` rows of `events` (`org_id`: one for all, or each event's)."""
    orgs = [org_id] * len(events) if isinstance(org_id, int) else org_id
    return [{"org_id": org, "user_id": user_id, "kind": kind, "payload": payload, "created_at": at}
            for org, (user_id, kind, payload) in zip(orgs, events, strict=True)]


def link_appended(events: Sequence[StreamEvent], appended: Iterable[Any], at: datetime) -> Told:
    """Each agent's `events` with their ids from `APPEND_EVENTS`' rows (id, user id, the id before it), in stream
    order. A stream's ids follow the order its events were given in (one statement, one writer at a time)."""
    ids: dict[int, list[tuple[int, int | None]]] = {}
    for event_id, user_id, before in appended:
        ids.setdefault(int(user_id), []).append((int(event_id), None if before is None else int(before)))
    given: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for user_id, kind, payload in events:
        given.setdefault(user_id, []).append((kind, payload))
    told: Told = {}
    stamp = at.isoformat()
    for user_id, stored in ids.items():
        stored.sort()
        previous = stored[0][1] or 0
        linked = told[user_id] = []
        for (event_id, _), (kind, payload) in zip(stored, given[user_id], strict=True):
            # As the store gives the payload back (JSON): the agent's memory then equals what a read would give.
            linked.append((previous, event_id, kind, json.loads(json.dumps(payload)), stamp))
            previous = event_id
    return told


def split_told(told: Told, parts: Sequence[Sequence[StreamEvent]]) -> list[Told]:
    """What one append of several writers' events (`parts`, given in this order) told each agent, per part: each
    agent's events keep the order they were given in, so a part's are the next ones of its agents."""
    taken: dict[int, int] = {}
    split: list[Told] = []
    for events in parts:
        counts: dict[int, int] = {}
        for user_id, _, _ in events:
            counts[user_id] = counts.get(user_id, 0) + 1
        part: Told = {}
        for user_id, count in counts.items():
            start = taken.get(user_id, 0)
            part[user_id] = told[user_id][start:start + count]
            taken[user_id] = start + count
        split.append(part)
    return split


def told_to(told: Told, user_id: int) -> list[LinkedEvent] | None:
    """One agent's part of what a commit appended; None when the commit appended nothing for it."""
    return told.get(user_id) or None


def chat_ended(connection: Connection, user_id: int, at: datetime) -> None:
    """The agent's conversation ended at `at` (closed, or transferred away): its idle time (Longest Idle) counts
    from then."""
    connection.execute(_CHAT_ENDED, {"agent": user_id, "at": at})


def work_left(connection: Connection, org_id: int, user_id: int, transaction_id: int, inbox_id: int, reason: str,
              at: datetime) -> Told:
    """A conversation leaves its agent (`reason` "closed", or "transferred" away): the event on the agent's stream,
    and its idle time counting from `at`."""
    told = append_to_streams(connection, org_id, [work_ended(user_id, transaction_id, inbox_id, reason)], at)
    chat_ended(connection, user_id, at)
    return told


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
