"""The inbox actor's view of one open transaction, its pure transitions, and its mapping to the store row.

Transitions return a new `TxState` and never change the old one: the inbox actor commits the new
state to the store first and only then replaces its in-memory copy, so a failed commit leaves the
actor believing exactly what the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.tables import Transaction


@dataclass(frozen=True)
class TxState:
    id: int
    # The customer (store/customers.py): conversations and sticky memory follow it, not a number.
    customer_id: int
    state: str
    waiting_since: datetime
    agent_id: int | None = None
    offered_to: int | None = None
    offer_id: str | None = None
    offer_expires_at: datetime | None = None
    offer_seq: int = 0
    sticky_dials: int = 0
    sticky_declined: bool = False
    tried: tuple[int, ...] = ()
    assigned_at: datetime | None = None
    closed_at: datetime | None = None
    # Not columns: rebuilt from the store on activation.
    sticky_agent: int | None = None
    current_offer_is_sticky: bool = False
    past_offerees: frozenset[int] = frozenset()
    first_message: dict[str, Any] | None = field(default=None, compare=False)
    # {id, user_id, wa_id, username, name} as agents are shown it; refreshed by each message.
    customer: dict[str, Any] = field(default_factory=dict, compare=False)
    # The row's creation time (the API shows it; it never changes).
    created_at: datetime | None = field(default=None, compare=False)
    # The messages handed to the agent holding it (or shown with its offer): the control loop tells the agent of
    # any other attached (a lost forward), whatever came after it.
    handed: frozenset[int] = field(default=frozenset(), compare=False)
    # Opened by this activation and never held by an agent since: every message attached to it passed through this
    # inbox, and `waited` holds those after the first, in order (the assignment shows them without reading them).
    messages_known: bool = field(default=False, compare=False)
    waited: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    # For the inbox's metrics (`actors.inbox_metrics`): when the pending offer was committed (its time to accept
    # counts from it), and the agent who last had the conversation offered or held (an offer to another one is
    # a reassignment). Rebuilt from the row on activation.
    offered_at: datetime | None = field(default=None, compare=False)
    last_agent: int | None = field(default=None, compare=False)

    @classmethod
    def of(cls, row: Transaction) -> TxState:
        return cls(
            id=row.id, customer_id=row.customer_id, state=row.state, waiting_since=row.waiting_since,
            agent_id=row.agent_id, offered_to=row.offered_to, offer_id=row.offer_id,
            offer_expires_at=row.offer_expires_at, offer_seq=row.offer_seq, sticky_dials=row.sticky_dials,
            sticky_declined=row.sticky_declined, tried=tuple(row.tried or []), assigned_at=row.assigned_at,
            closed_at=row.closed_at, created_at=row.created_at,
            # An offered row was last written by its offer's commit.
            offered_at=row.updated_at if row.state == "offered" else None,
            last_agent=row.offered_to if row.offered_to is not None else row.agent_id,
        )

    # ------------------------------------------------------------------ transitions (pure)

    def new_round(self) -> TxState:
        """Every eligible agent passed: forget who was tried and the sticky counters, start over."""
        return replace(self, tried=(), sticky_dials=0, sticky_declined=False)

    def offered(self, user_id: int, expires_at: datetime, *, sticky_dial: bool, offer_id: str) -> TxState:
        return replace(self, state="offered", offered_to=user_id, offer_seq=self.offer_seq + 1, offer_id=offer_id,
                       offer_expires_at=expires_at, current_offer_is_sticky=sticky_dial,
                       past_offerees=self.past_offerees | {user_id}, last_agent=user_id,
                       offered_at=None)  # stamped by the inbox with its commit's time

    def requeued(self, kind: str, dials_per_agent: int, *, count_as_tried: bool = True) -> TxState:
        """The pending offer ended (missed, declined or rescinded): back to the queue.

        A missed sticky dial spends one dial; the sticky agent joins `tried` once its dials are
        spent or it declined, so the fallback round tries the others first.
        """
        user_id = self.offered_to
        tried = list(self.tried)
        dials, declined = self.sticky_dials, self.sticky_declined
        if count_as_tried and user_id is not None:
            if self.current_offer_is_sticky and kind == "declined":
                declined = True
                tried.append(user_id)
            elif self.current_offer_is_sticky:
                dials += 1
                if dials >= dials_per_agent:
                    tried.append(user_id)
            elif user_id not in tried:
                tried.append(user_id)
        return replace(self, state="queued", offered_to=None, offer_id=None, offer_expires_at=None,
                       current_offer_is_sticky=False, tried=tuple(dict.fromkeys(tried)), sticky_dials=dials,
                       sticky_declined=declined)

    def assigned(self, user_id: int, now: datetime) -> TxState:
        # From now on the intake attaches its follow-ups: the inbox no longer sees every message.
        return replace(self, state="assigned", agent_id=user_id, assigned_at=now, offered_to=None, offer_id=None,
                       offer_expires_at=None, current_offer_is_sticky=False, sticky_agent=user_id,
                       messages_known=False, waited=())

    def back_to_queue(self, previous: int | None) -> TxState:
        """A supervisor sent an assigned transaction back to the queue: the previous agent is tried."""
        return replace(self, state="queued", agent_id=None, assigned_at=None, offered_to=None, offer_id=None,
                       offer_expires_at=None, tried=(previous,) if previous is not None else (),
                       sticky_dials=0, sticky_declined=False,
                       last_agent=previous if previous is not None else self.last_agent)

    # ------------------------------------------------------------------ for the metrics

    @property
    def never_offered(self) -> bool:
        """Never offered nor held by an agent yet: its next offer is its first."""
        return self.offer_seq == 0 and self.last_agent is None

    def moves_to(self, user_id: int) -> bool:
        """Offering it to `user_id` reassigns it: another agent had it last (or one this inbox no longer knows:
        a conversation reloaded in the queue after a restart was offered before, most likely to someone else)."""
        return not self.never_offered and self.last_agent != user_id

    def closed(self, now: datetime) -> TxState:
        return replace(self, state="closed", closed_at=now, offered_to=None, offer_id=None, offer_expires_at=None)

    # ------------------------------------------------------------------ store mapping and views

    def columns(self, now: datetime) -> dict[str, Any]:
        """The persisted columns, for an UPDATE after each transition."""
        return {
            "state": self.state, "agent_id": self.agent_id, "offered_to": self.offered_to,
            "offer_id": self.offer_id, "offer_expires_at": self.offer_expires_at, "offer_seq": self.offer_seq,
            "sticky_dials": self.sticky_dials, "sticky_declined": self.sticky_declined, "tried": list(self.tried),
            "waiting_since": self.waiting_since, "assigned_at": self.assigned_at, "closed_at": self.closed_at,
            "updated_at": now,
        }

    def view(self) -> dict[str, Any]:
        """What an API answer shows after an action: the columns, and what never changes when this state knows
        it (`created_at`, `customer`: None otherwise, and the gateway reads them)."""
        return {"state": self.state, "agent_id": self.agent_id, "offered_to": self.offered_to,
                "offer_expires_at": self.offer_expires_at, "waiting_since": self.waiting_since,
                "assigned_at": self.assigned_at, "closed_at": self.closed_at, "created_at": self.created_at,
                "customer": self.shown_customer() if self.customer else None}

    def shown_customer(self) -> dict[str, Any]:
        """The customer as agents and the API show it: one merged into another shows as the one it joined (as the
        store's reads show it), whose view the customer dict holds."""
        return {"id": self.customer.get("id", self.customer_id), "user_id": self.customer.get("user_id"),
                "wa_id": self.customer.get("wa_id"), "username": self.customer.get("username"),
                "name": self.customer.get("name")}

    def summary(self, inbox_id: int, inbox_name: str) -> dict[str, Any]:
        """What an agent is shown about the transaction (offer, assignment, transfer events)."""
        return {
            "transaction_id": self.id, "inbox_id": inbox_id, "inbox_name": inbox_name,
            "customer": self.shown_customer(),
            "first_message": self.first_message,
            "waiting_since": self.waiting_since.isoformat(),
        }
