"""Plain data types for the routing decision.

Everything here is immutable and Ray-free: the inbox actor builds a snapshot,
hands it to :func:`routing.decide.decide`, and applies the returned decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeAlias


class AssignmentMode(StrEnum):
    """How an inbox chooses the agent to offer a transaction to."""

    ROUND_ROBIN = "round_robin"
    MANUAL = "manual"
    PROFICIENCY = "proficiency"
    STICKY = "sticky"
    LONGEST_IDLE = "longest_idle"


def orders_by_idle(mode: str) -> bool:
    """Whether an inbox of this assignment mode decides on how long its agents have been idle (Longest Idle: busy
    agents skipped, the others in `idle_since` order); every other mode decides on presence, capacity and an offer
    ringing alone (`routing.decide`)."""
    return mode == AssignmentMode.LONGEST_IDLE


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """One inbox member as seen at decision time.

    ``order_key`` defines the stable rotation order and must be unique per inbox
    (the user id is a good choice); the pointer stored by the inbox is an
    ``order_key``, so it survives agents leaving and joining.
    ``active_count`` is counted across all inboxes, so capacity is global.
    ``idle_since`` is the end of the agent's last WhatsApp chat, or when they
    became available if they never had one; ``None`` means "never active" and
    sorts as the longest idle. All ``idle_since`` values of one request must be
    mutually comparable (all aware or all naive).
    """

    user_id: int
    order_key: int
    status: str  # "available" | "away" | "offline"
    active_count: int
    max_concurrent: int
    has_pending_offer: bool
    proficiency: int = 1  # 1..100
    idle_since: datetime | None = None
    licensed: bool = True

    @property
    def is_eligible(self) -> bool:
        """Whether the agent may be offered a transaction right now.

        Membership is implied: the snapshot only contains the inbox's members.
        """
        return (
            self.status == "available"
            and self.licensed
            and self.active_count < self.max_concurrent
            # One offer at a time: an agent with a ringing offer cannot take another.
            and not self.has_pending_offer
        )

    @property
    def is_busy(self) -> bool:
        """Handling at least one transaction (longest_idle skips these even under capacity)."""
        return self.active_count > 0


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """Snapshot of one inbox + one transaction, the sole input of ``decide``.

    ``agents`` are the inbox's members in any state and any order; ``tried`` holds
    the user ids already offered this transaction (declined or missed).
    For sticky mode, ``sticky_agent`` is the user id of the last agent who handled
    this customer on this inbox (``None`` for a first transaction) and
    ``sticky_dials_made`` counts the dials already spent on it for this transaction.
    """

    mode: AssignmentMode
    agents: tuple[AgentSnapshot, ...]
    rotation_pointer: int | None
    tried: frozenset[int]
    sticky_agent: int | None = None
    sticky_dials_made: int = 0
    dials_per_agent: int = 1
    sticky_declined: bool = False

    def __post_init__(self) -> None:
        # Fail loudly on nonsense counters instead of silently mis-routing.
        if self.sticky_dials_made < 0:
            raise ValueError(f"sticky_dials_made must be >= 0, got {self.sticky_dials_made}")
        if self.dials_per_agent < 0:
            raise ValueError(f"dials_per_agent must be >= 0, got {self.dials_per_agent}")


@dataclass(frozen=True, slots=True)
class Offer:
    """Offer the transaction to ``user_id``.

    ``new_rotation_pointer`` is what the inbox should store afterwards: the chosen
    agent's ``order_key`` for round-robin-style picks, the unchanged pointer for a
    sticky dial (a redial must not disturb everyone else's rotation).
    """

    user_id: int
    new_rotation_pointer: int | None
    sticky_dial: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Queue:
    """Leave the transaction in the inbox's wait queue.

    ``reset_tried`` asks the caller to clear the tried set so the next
    eligibility event starts a fresh round.
    """

    reason: str
    reset_tried: bool


Decision: TypeAlias = Offer | Queue


def eligible_agents(agents: Iterable[AgentSnapshot]) -> list[AgentSnapshot]:
    """The members that may be offered a transaction right now, in input order."""
    return [a for a in agents if a.is_eligible]
