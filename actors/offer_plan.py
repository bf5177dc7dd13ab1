"""A routing pass as data: which waiting conversations are offered to whom, decided before any agent is asked.

Pure (no Ray, no store, no clock of its own): the inbox actor plans under its lock, asks every planned
agent to hold its offer at once with the lock released, then commits every offer that was held in one
store transaction. Planning picks at most one offer per agent per pass (an agent with an offer ringing
is not eligible), threading the rotation pointer from one decision to the next as the pass would have
stored it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from actors.transaction_state import TxState
from routing import AgentSnapshot, AssignmentMode, Offer, Queue, RoutingRequest, decide


def new_offer_id(tx_id: int) -> str:
    # Unique even when a commit fails and the same sequence number is offered again. A conversation the pass opens
    # has no id before its commit (`actors.pending_opens`).
    return f"{tx_id if tx_id > 0 else 'new'}.{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class RoutingSettings:
    """The inbox's configuration as one routing pass uses it."""

    inbox_id: int
    inbox_name: str
    mode: AssignmentMode
    reassign_after_s: int
    dials_per_agent: int
    rotation_pointer: int | None


@dataclass(frozen=True)
class PlannedOffer:
    """One reservation to make: the agent holds `offer`, then the inbox commits `offered` in place of `waiting`."""

    waiting: TxState  # the conversation as planned from: the commit is for this state only
    offered: TxState
    user_id: int
    offer: dict[str, Any]  # what the agent holds and is shown
    detail: dict[str, Any]  # the `offered` audit event's detail
    rotation_pointer: int | None  # the pointer once this offer is made

    @property
    def offer_id(self) -> str:
        assert self.offered.offer_id is not None
        return self.offered.offer_id


def _request(settings: RoutingSettings, agents: tuple[AgentSnapshot, ...], pointer: int | None,
             tx: TxState) -> RoutingRequest:
    sticky_mode = settings.mode == AssignmentMode.STICKY
    return RoutingRequest(
        mode=settings.mode, agents=agents, rotation_pointer=pointer, tried=frozenset(tx.tried),
        sticky_agent=tx.sticky_agent if sticky_mode else None, sticky_dials_made=tx.sticky_dials,
        dials_per_agent=settings.dials_per_agent, sticky_declined=tx.sticky_declined,
    )


def plan_offers(settings: RoutingSettings, agents: Iterable[AgentSnapshot], waiting: Iterable[TxState],
                now: datetime) -> list[PlannedOffer]:
    """The offers of one pass over the queued conversations, oldest first (manual inboxes offer nothing)."""
    if settings.mode == AssignmentMode.MANUAL:
        return []
    view = {agent.user_id: agent for agent in agents}
    pointer = settings.rotation_pointer
    expires_at = now + timedelta(seconds=settings.reassign_after_s)
    planned: list[PlannedOffer] = []
    for tx in sorted((tx for tx in waiting if tx.state == "queued"), key=lambda tx: (tx.waiting_since, tx.id)):
        if not any(agent.is_eligible for agent in view.values()):
            break  # nobody can take anything now; an agent's next snapshot asks for a pass
        start = tx
        decision = decide(_request(settings, tuple(view.values()), pointer, start))
        new_round = isinstance(decision, Queue) and decision.reset_tried
        if new_round:
            # Every eligible agent passed on it: a new round starts at once, in the mode's order.
            start = tx.new_round()
            decision = decide(_request(settings, tuple(view.values()), pointer, start))
        if not isinstance(decision, Offer):
            continue
        offered = start.offered(decision.user_id, expires_at, sticky_dial=decision.sticky_dial,
                                offer_id=new_offer_id(tx.id))
        assert offered.offer_id is not None
        offer = {**offered.summary(settings.inbox_id, settings.inbox_name), "offer_id": offered.offer_id,
                 "expires_at": expires_at.isoformat()}
        if tx.id < 0:
            offer["transaction_id"] = None  # opened by the pass's commit, which shows the offer with the row's id
        detail: dict[str, Any] = {"reason": decision.reason, "expires_at": expires_at.isoformat(),
                                  "sticky_dial": decision.sticky_dial, "offer_id": offered.offer_id}
        if new_round:
            detail["new_round"] = True
        if decision.new_rotation_pointer is not None:
            pointer = decision.new_rotation_pointer
        # Ringing now: not eligible for another conversation of this pass.
        view[decision.user_id] = replace(view[decision.user_id], has_pending_offer=True)
        planned.append(PlannedOffer(waiting=tx, offered=offered, user_id=decision.user_id, offer=offer,
                                    detail=detail, rotation_pointer=pointer))
    return planned
