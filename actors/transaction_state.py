"""The inbox actor's in-memory view of one open transaction, and its mapping to the store row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from store.tables import Transaction


@dataclass
class TxState:
    id: int
    customer_id: int
    state: str
    waiting_since: datetime
    agent_id: int | None = None
    offered_to: int | None = None
    offer_expires_at: datetime | None = None
    offer_seq: int = 0
    sticky_dials: int = 0
    tried: list[int] = field(default_factory=list)
    assigned_at: datetime | None = None
    closed_at: datetime | None = None
    # Not persisted as columns: rebuilt from the store on activation.
    sticky_agent: int | None = None
    sticky_declined: bool = False
    current_offer_is_sticky: bool = False
    # Every eligible agent passed on it: it waits for an eligibility event before a new round.
    round_over: bool = False
    past_offerees: set[int] = field(default_factory=set)
    first_message: dict[str, Any] | None = None
    # {id, user_id, wa_id, username, name} as agents are shown it; refreshed by each message.
    customer: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Transaction) -> TxState:
        return cls(
            id=row.id, customer_id=row.customer_id, state=row.state,
            waiting_since=row.waiting_since, agent_id=row.agent_id, offered_to=row.offered_to,
            offer_expires_at=row.offer_expires_at, offer_seq=row.offer_seq, sticky_dials=row.sticky_dials,
            tried=list(row.tried or []), assigned_at=row.assigned_at, closed_at=row.closed_at,
        )

    def columns(self, now: datetime) -> dict[str, Any]:
        """The persisted columns, for an UPDATE after each transition."""
        return {
            "state": self.state, "agent_id": self.agent_id, "offered_to": self.offered_to,
            "offer_expires_at": self.offer_expires_at, "offer_seq": self.offer_seq,
            "sticky_dials": self.sticky_dials, "tried": list(self.tried), "waiting_since": self.waiting_since,
            "assigned_at": self.assigned_at, "closed_at": self.closed_at, "updated_at": now,
        }

    def summary(self, inbox_id: int, inbox_name: str) -> dict[str, Any]:
        """What an agent is shown about the transaction (offer, assignment, transfer events)."""
        return {
            "transaction_id": self.id, "inbox_id": inbox_id, "inbox_name": inbox_name,
            "customer": {"id": self.customer_id, "user_id": self.customer.get("user_id"),
                         "wa_id": self.customer.get("wa_id"), "username": self.customer.get("username"),
                         "name": self.customer.get("name")},
            "first_message": self.first_message,
            "waiting_since": self.waiting_since.isoformat(),
        }
