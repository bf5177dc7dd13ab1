"""Pure, Ray-free routing logic for inboxes: who gets offered a transaction."""

from routing.decide import (
    decide,
    pick_longest_idle,
    pick_proficiency,
    pick_round_robin,
    pick_sticky,
    rotate_after,
)
from routing.model import (
    AgentSnapshot,
    AssignmentMode,
    Decision,
    Offer,
    Queue,
    RoutingRequest,
    eligible_agents,
    orders_by_idle,
)
from routing.queue import queue_order

__all__ = [
    "AgentSnapshot",
    "AssignmentMode",
    "Decision",
    "Offer",
    "Queue",
    "RoutingRequest",
    "decide",
    "eligible_agents",
    "orders_by_idle",
    "pick_longest_idle",
    "pick_proficiency",
    "pick_round_robin",
    "pick_sticky",
    "queue_order",
    "rotate_after",
]
