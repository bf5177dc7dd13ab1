"""An agent's capacity, checked by the commit that gives the agent a conversation.

The agent's actor reserves capacity before an inbox commits an assignment (a hold), but a hold lives in the
actor's memory: an actor restarted between the hold and the commit, or a hold that lapsed while a slow commit
was still on its way, lets the agent hold another conversation meanwhile. The store is the single truth, so the
commit that assigns (accept, claim, transfer, WhatsApp Back) counts what the agent holds in the same transaction
and refuses the conversation that would go over `max_concurrent` (TaskRouter checks a worker's capacity the same
way when a reservation is accepted).

On PostgreSQL the commit has locked the agent's stream (`store.agent_streams.append_to_streams` locks its state
row) before this statement starts, so every other assignment to the agent committed before it is counted and
none can commit beside it; SQLite's writers take turns.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

_HELD = text(
    "SELECT a.max_concurrent, (SELECT count(*) FROM transactions t "
    "WHERE t.agent_id = a.user_id AND t.state = 'assigned' AND t.id <> :transaction) "
    "FROM agent_states a WHERE a.user_id = :agent")


class AtCapacity(Exception):
    """The agent already holds as many conversations as it may: the assignment is not committed."""

    def __init__(self, user_id: int, held: int, max_concurrent: int) -> None:
        super().__init__(f"agent is at capacity ({held}/{max_concurrent})")
        self.user_id = user_id
        self.held = held
        self.max_concurrent = max_concurrent


def check_capacity(connection: Connection, user_id: int, transaction_id: int) -> None:
    """Raise `AtCapacity` when the agent holds `max_concurrent` conversations besides `transaction_id` (which its
    caller is assigning to it). Called after the caller's commit appended to the agent's stream (its lock)."""
    row = connection.execute(_HELD, {"agent": user_id, "transaction": transaction_id}).first()
    # An agent takes work only through its actor, whose activation writes its state row; without one, the
    # column's default applies.
    max_concurrent, held = (int(row[0]), int(row[1])) if row is not None else (1, 0)
    if held >= max_concurrent:
        raise AtCapacity(user_id, held, max_concurrent)
