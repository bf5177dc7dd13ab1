"""Pure routing decision: which agent (if any) gets offered a transaction.

One small function per assignment mode; :func:`decide` only dispatches.
No I/O, no clock, no randomness: the same request always yields the same decision,
independent of the order of ``request.agents``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from routing.model import (
    AgentSnapshot,
    AssignmentMode,
    Decision,
    Offer,
    Queue,
    RoutingRequest,
    eligible_agents,
)

__all__ = [
    "decide",
    "pick_longest_idle",
    "pick_proficiency",
    "pick_round_robin",
    "pick_sticky",
    "rotate_after",
]


def rotate_after(candidates: Iterable[AgentSnapshot], pointer: int | None) -> AgentSnapshot:
    """First candidate (by ascending ``order_key``) strictly after ``pointer``, wrapping around.

    ``pointer`` is the ``order_key`` of the last agent offered; ``None`` starts at the
    smallest key. Because the pointer is a key rather than a list index, the rotation
    continues correctly when the last-offered agent has left or new agents joined.
    """
    # user_id breaks (unexpected) order_key ties so the result stays deterministic.
    ordered = sorted(candidates, key=lambda a: (a.order_key, a.user_id))
    if not ordered:
        raise ValueError("rotate_after needs at least one candidate")
    if pointer is not None:
        for agent in ordered:
            if agent.order_key > pointer:
                return agent
    return ordered[0]


def _untried(
    pool: Sequence[AgentSnapshot], tried: frozenset[int], empty_reason: str
) -> list[AgentSnapshot] | Queue:
    """Apply the tried-set rule to the mode's pool of offerable agents.

    Empty pool -> queue and keep the tried set (nobody new to try yet).
    Pool fully tried -> queue and ask for a reset, so the next eligibility event
    starts a fresh round instead of starving the transaction forever.
    """
    if not pool:
        return Queue(reason=empty_reason, reset_tried=False)
    fresh = [a for a in pool if a.user_id not in tried]
    if not fresh:
        return Queue(reason="every eligible agent tried", reset_tried=True)
    return fresh


def _round_robin_offer(
    pool: Sequence[AgentSnapshot],
    request: RoutingRequest,
    reason: str,
    empty_reason: str = "no eligible agent",
) -> Decision:
    """Round robin over ``pool`` after the tried-set rule; the pointer advances to the chosen agent."""
    fresh = _untried(pool, request.tried, empty_reason)
    if isinstance(fresh, Queue):
        return fresh
    chosen = rotate_after(fresh, request.rotation_pointer)
    return Offer(
        user_id=chosen.user_id, new_rotation_pointer=chosen.order_key, sticky_dial=False, reason=reason
    )


def pick_round_robin(request: RoutingRequest) -> Decision:
    """Next eligible, untried agent after the rotation pointer."""
    return _round_robin_offer(eligible_agents(request.agents), request, "round robin")


def pick_proficiency(request: RoutingRequest) -> Decision:
    """Highest-proficiency eligible, untried agent; round robin among equals."""
    fresh = _untried(eligible_agents(request.agents), request.tried, "no eligible agent")
    if isinstance(fresh, Queue):
        return fresh
    best = max(a.proficiency for a in fresh)
    top = [a for a in fresh if a.proficiency == best]
    chosen = rotate_after(top, request.rotation_pointer)
    return Offer(
        user_id=chosen.user_id,
        new_rotation_pointer=chosen.order_key,
        sticky_dial=False,
        reason=f"highest proficiency {best}",
    )


def _sticky_dialable(request: RoutingRequest) -> AgentSnapshot | None:
    """The sticky agent if it may be (re)dialled for this transaction, else None."""
    if request.sticky_agent is None or request.sticky_declined:
        return None
    if request.sticky_dials_made >= request.dials_per_agent:
        return None
    # Normally the caller only adds the sticky agent to `tried` once its dials are
    # exhausted; if it is there anyway, the tried set wins (never re-offer a tried agent).
    if request.sticky_agent in request.tried:
        return None
    for agent in request.agents:
        if agent.user_id == request.sticky_agent and agent.is_eligible:
            return agent
    return None  # left the inbox or not eligible right now


def pick_sticky(request: RoutingRequest) -> Decision:
    """Redial the customer's last agent while it has dials left, else round robin among everyone.

    The fallback pool includes the sticky agent: once its dials are spent (or it declined) the
    caller puts it in ``tried``, so the others come first, and when they have all passed too the
    next round starts with the sticky agent again. Excluding it would leave the customer waiting
    whenever it is the only agent available.
    """
    if request.sticky_agent is None:
        # First transaction of this customer on this inbox: nobody to stick to yet.
        return _round_robin_offer(eligible_agents(request.agents), request, "round robin (no sticky agent)")
    sticky = _sticky_dialable(request)
    if sticky is not None:
        dial = request.sticky_dials_made + 1
        return Offer(
            user_id=sticky.user_id,
            # A redial is not a rotation step: leave everyone else's turn untouched.
            new_rotation_pointer=request.rotation_pointer,
            sticky_dial=True,
            reason=f"sticky agent (dial {dial} of {request.dials_per_agent})",
        )
    return _round_robin_offer(eligible_agents(request.agents), request, "sticky fallback: round robin")


def _idle_key(agent: AgentSnapshot) -> tuple[int, object]:
    # None ("never active") sorts before every datetime, i.e. counts as idle the longest.
    return (0, 0) if agent.idle_since is None else (1, agent.idle_since)


def pick_longest_idle(request: RoutingRequest) -> Decision:
    """Eligible, untried, non-busy agent idle the longest; round robin among equal idle_since."""
    # Busy agents are excluded even under capacity: this mode spreads whole conversations.
    idle = [a for a in eligible_agents(request.agents) if not a.is_busy]
    fresh = _untried(idle, request.tried, "no idle eligible agent")
    if isinstance(fresh, Queue):
        return fresh
    earliest = min(fresh, key=_idle_key).idle_since
    tied = [a for a in fresh if a.idle_since == earliest]
    chosen = rotate_after(tied, request.rotation_pointer)
    since = "never active" if earliest is None else f"since {earliest.isoformat()}"
    return Offer(
        user_id=chosen.user_id,
        new_rotation_pointer=chosen.order_key,
        sticky_dial=False,
        reason=f"longest idle {since}",
    )


def decide(request: RoutingRequest) -> Decision:
    """Route one transaction of one inbox according to the inbox's assignment mode."""
    match request.mode:
        case AssignmentMode.MANUAL:
            # Agents claim from the queue themselves; the router never offers.
            return Queue(reason="manual mode", reset_tried=False)
        case AssignmentMode.ROUND_ROBIN:
            return pick_round_robin(request)
        case AssignmentMode.PROFICIENCY:
            return pick_proficiency(request)
        case AssignmentMode.STICKY:
            return pick_sticky(request)
        case AssignmentMode.LONGEST_IDLE:
            return pick_longest_idle(request)
    raise ValueError(f"unknown assignment mode: {request.mode!r}")
