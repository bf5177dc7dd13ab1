"""Unit tests for every routing rule in routing.decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing import (
    AgentSnapshot,
    AssignmentMode,
    Decision,
    Offer,
    Queue,
    RoutingRequest,
    decide,
    eligible_agents,
    pick_longest_idle,
    pick_proficiency,
    pick_round_robin,
    pick_sticky,
    queue_order,
    rotate_after,
)

T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)


def agent(
    uid: int,
    *,
    status: str = "available",
    active: int = 0,
    cap: int = 3,
    pending: bool = False,
    prof: int = 1,
    idle: datetime | None = None,
    licensed: bool = True,
    order_key: int | None = None,
) -> AgentSnapshot:
    return AgentSnapshot(
        user_id=uid,
        order_key=uid if order_key is None else order_key,
        status=status,
        active_count=active,
        max_concurrent=cap,
        has_pending_offer=pending,
        proficiency=prof,
        idle_since=idle,
        licensed=licensed,
    )


def req(
    mode: AssignmentMode,
    agents: list[AgentSnapshot],
    pointer: int | None = None,
    tried: set[int] | None = None,
    **kw: object,
) -> RoutingRequest:
    return RoutingRequest(
        mode=mode,
        agents=tuple(agents),
        rotation_pointer=pointer,
        tried=frozenset(tried or ()),
        **kw,  # type: ignore[arg-type]
    )


def offered(decision: Decision) -> int:
    assert isinstance(decision, Offer), decision
    return decision.user_id


RR = AssignmentMode.ROUND_ROBIN


# --- model ---------------------------------------------------------------------


def test_mode_values() -> None:
    assert [m.value for m in AssignmentMode] == [
        "round_robin",
        "manual",
        "proficiency",
        "sticky",
        "longest_idle",
    ]
    assert AssignmentMode("sticky") is AssignmentMode.STICKY


@pytest.mark.parametrize(
    ("snapshot", "eligible"),
    [
        (agent(1), True),
        (agent(1, status="away"), False),
        (agent(1, status="offline"), False),
        (agent(1, licensed=False), False),
        (agent(1, active=2, cap=3), True),
        (agent(1, active=3, cap=3), False),
        (agent(1, active=0, cap=0), False),
        (agent(1, pending=True), False),
    ],
)
def test_is_eligible(snapshot: AgentSnapshot, eligible: bool) -> None:
    assert snapshot.is_eligible is eligible


def test_eligible_agents_keeps_input_order() -> None:
    agents = [agent(3), agent(1, status="away"), agent(2)]
    assert [a.user_id for a in eligible_agents(agents)] == [3, 2]


def test_negative_counters_rejected() -> None:
    with pytest.raises(ValueError):
        req(AssignmentMode.STICKY, [agent(1)], sticky_dials_made=-1)
    with pytest.raises(ValueError):
        req(AssignmentMode.STICKY, [agent(1)], dials_per_agent=-1)


# --- rotate_after ----------------------------------------------------------------


def test_rotate_after_pointer_none_starts_at_smallest() -> None:
    assert rotate_after([agent(30), agent(10), agent(20)], None).user_id == 10


def test_rotate_after_next_greater_and_wraps() -> None:
    cands = [agent(30), agent(10), agent(20)]
    assert rotate_after(cands, 10).user_id == 20
    assert rotate_after(cands, 15).user_id == 20  # pointer need not be a current key
    assert rotate_after(cands, 30).user_id == 10  # wrap around
    assert rotate_after(cands, 99).user_id == 10
    assert rotate_after(cands, -5).user_id == 10


def test_rotate_after_uses_order_key_not_user_id() -> None:
    cands = [agent(1, order_key=300), agent(2, order_key=100), agent(3, order_key=200)]
    assert rotate_after(cands, 100).user_id == 3
    assert rotate_after(cands, 300).user_id == 2


def test_rotate_after_empty_raises() -> None:
    with pytest.raises(ValueError):
        rotate_after([], None)


# --- round robin -----------------------------------------------------------------


def run_rotation(agents: list[AgentSnapshot], pointer: int | None, n: int) -> tuple[list[int], int | None]:
    """Feed each returned pointer into the next decision, like the inbox actor does."""
    picks = []
    for _ in range(n):
        d = decide(req(RR, agents, pointer))
        assert isinstance(d, Offer)
        assert d.new_rotation_pointer is not None
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    return picks, pointer


def test_round_robin_rotates_and_wraps() -> None:
    agents = [agent(3), agent(1), agent(2)]
    picks, pointer = run_rotation(agents, None, 7)
    assert picks == [1, 2, 3, 1, 2, 3, 1]
    assert pointer == 1


def test_round_robin_offer_fields() -> None:
    d = pick_round_robin(req(RR, [agent(5), agent(7)], pointer=5))
    assert d == Offer(user_id=7, new_rotation_pointer=7, sticky_dial=False, reason="round robin")


def test_round_robin_skips_ineligible() -> None:
    agents = [agent(1), agent(2, status="away"), agent(3, active=3, cap=3), agent(4, pending=True), agent(5)]
    picks, _ = run_rotation(agents, None, 4)
    assert picks == [1, 5, 1, 5]


def test_round_robin_continues_after_last_offered_agent_leaves() -> None:
    # Pointer is 2 (agent 2 was offered last); agent 2 then leaves the inbox.
    d = decide(req(RR, [agent(1), agent(3), agent(4)], pointer=2))
    assert offered(d) == 3


def test_round_robin_continues_after_agent_joins() -> None:
    # 1 and 3 were rotating, pointer at 1; agent 2 joins: it is next in member order.
    assert offered(decide(req(RR, [agent(1), agent(3), agent(2)], pointer=1))) == 2
    # A joiner with the largest key is reached before wrapping.
    assert offered(decide(req(RR, [agent(1), agent(3), agent(9)], pointer=3))) == 9


def test_round_robin_agent_becomes_eligible_again() -> None:
    agents = [agent(1), agent(2, status="away"), agent(3)]
    assert offered(decide(req(RR, agents, pointer=1))) == 3
    agents[1] = agent(2)
    assert offered(decide(req(RR, agents, pointer=1))) == 2


def test_round_robin_no_agents() -> None:
    assert decide(req(RR, [], pointer=4)) == Queue(reason="no eligible agent", reset_tried=False)


def test_round_robin_nobody_eligible_keeps_tried() -> None:
    agents = [agent(1, status="offline"), agent(2, pending=True)]
    assert decide(req(RR, agents, tried={1})) == Queue(reason="no eligible agent", reset_tried=False)


# --- tried set -------------------------------------------------------------------


def test_tried_agents_excluded() -> None:
    agents = [agent(1), agent(2), agent(3)]
    # Pointer says 2 is next, but 2 already declined this transaction.
    assert offered(decide(req(RR, agents, pointer=1, tried={2}))) == 3
    assert offered(decide(req(RR, agents, pointer=1, tried={2, 3}))) == 1


def test_all_eligible_tried_resets() -> None:
    # Agent 3 is untried but not eligible: it does not block the reset.
    agents = [agent(1), agent(2), agent(3, status="away")]
    d = decide(req(RR, agents, pointer=1, tried={1, 2}))
    assert d == Queue(reason="every eligible agent tried", reset_tried=True)


def test_after_reset_fresh_round_starts() -> None:
    agents = [agent(1), agent(2)]
    assert offered(decide(req(RR, agents, pointer=2, tried=set()))) == 1


@pytest.mark.parametrize(
    "mode", [AssignmentMode.ROUND_ROBIN, AssignmentMode.PROFICIENCY, AssignmentMode.LONGEST_IDLE]
)
def test_tried_reset_applies_to_every_offering_mode(mode: AssignmentMode) -> None:
    agents = [agent(1, prof=50, idle=T0), agent(2, prof=10, idle=T0)]
    assert decide(req(mode, agents, tried={1, 2})) == Queue(
        reason="every eligible agent tried", reset_tried=True
    )
    assert offered(decide(req(mode, agents, tried={1}))) == 2


# --- manual ----------------------------------------------------------------------


@pytest.mark.parametrize("tried", [set(), {1}, {1, 2}])
def test_manual_always_queues(tried: set[int]) -> None:
    agents = [agent(1, prof=90), agent(2)]
    d = decide(req(AssignmentMode.MANUAL, agents, pointer=1, tried=tried, sticky_agent=1))
    assert d == Queue(reason="manual mode", reset_tried=False)


def test_manual_queues_with_nobody() -> None:
    assert decide(req(AssignmentMode.MANUAL, [])) == Queue(reason="manual mode", reset_tried=False)


# --- proficiency -----------------------------------------------------------------

PROF = AssignmentMode.PROFICIENCY


def test_proficiency_highest_wins() -> None:
    agents = [agent(1, prof=40), agent(2, prof=80), agent(3, prof=60)]
    d = pick_proficiency(req(PROF, agents, pointer=2))
    assert d == Offer(user_id=2, new_rotation_pointer=2, sticky_dial=False, reason="highest proficiency 80")


def test_proficiency_ignores_ineligible_best() -> None:
    agents = [agent(1, prof=40), agent(2, prof=100, status="away"), agent(3, prof=60, active=3, cap=3)]
    d = decide(req(PROF, agents))
    assert offered(d) == 1
    assert isinstance(d, Offer) and d.reason == "highest proficiency 40"


def test_proficiency_ties_round_robin() -> None:
    agents = [agent(1, prof=80), agent(2, prof=50), agent(3, prof=80), agent(4, prof=80)]
    pointer: int | None = None
    picks = []
    for _ in range(5):
        d = decide(req(PROF, agents, pointer))
        assert isinstance(d, Offer)
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    assert picks == [1, 3, 4, 1, 3]


def test_proficiency_tie_rotation_uses_shared_pointer() -> None:
    # Pointer left at 2 by some other pick: next top-group agent after key 2 is 3.
    agents = [agent(1, prof=80), agent(2, prof=50), agent(3, prof=80)]
    assert offered(decide(req(PROF, agents, pointer=2))) == 3
    assert offered(decide(req(PROF, agents, pointer=3))) == 1


def test_proficiency_tried_falls_to_next_level() -> None:
    agents = [agent(1, prof=80), agent(2, prof=50), agent(3, prof=70)]
    assert offered(decide(req(PROF, agents, tried={1}))) == 3
    assert offered(decide(req(PROF, agents, tried={1, 3}))) == 2


def test_proficiency_nobody_eligible() -> None:
    d = decide(req(PROF, [agent(1, prof=99, licensed=False)]))
    assert d == Queue(reason="no eligible agent", reset_tried=False)


# --- sticky ----------------------------------------------------------------------

STICKY = AssignmentMode.STICKY


def test_sticky_first_transaction_is_round_robin() -> None:
    agents = [agent(1), agent(2), agent(3)]
    d = pick_sticky(req(STICKY, agents, pointer=1, sticky_agent=None))
    assert d == Offer(
        user_id=2, new_rotation_pointer=2, sticky_dial=False, reason="round robin (no sticky agent)"
    )


def test_sticky_dials_then_falls_back_to_the_others_first() -> None:
    agents = [agent(1), agent(2), agent(3)]
    for made in range(3):
        d = decide(req(STICKY, agents, pointer=3, sticky_agent=1, sticky_dials_made=made, dials_per_agent=3))
        assert d == Offer(
            user_id=1,
            new_rotation_pointer=3,  # a redial does not move the rotation
            sticky_dial=True,
            reason=f"sticky agent (dial {made + 1} of 3)",
        )
    # Dials exhausted: the inbox puts the sticky agent in `tried`, so the fallback tries the others first.
    d = decide(req(STICKY, agents, pointer=3, sticky_agent=1, tried={1}, sticky_dials_made=3, dials_per_agent=3))
    assert d == Offer(
        user_id=2, new_rotation_pointer=2, sticky_dial=False, reason="sticky fallback: round robin"
    )


def test_sticky_fallback_includes_the_sticky_agent() -> None:
    # The fallback is round robin among ALL available agents: dials spent, not yet tried this round.
    agents = [agent(1), agent(2), agent(3)]
    d = decide(req(STICKY, agents, pointer=None, sticky_agent=1, sticky_dials_made=1, dials_per_agent=1))
    assert offered(d) == 1
    assert isinstance(d, Offer) and not d.sticky_dial


def test_sticky_agent_alone_is_offered_again_in_a_new_round() -> None:
    # The sticky agent is the only one available and has spent its dials (or declined): everyone
    # passed, so the inbox starts a new round at once, which dials the sticky agent again.
    only = [agent(1), agent(2, status="away")]
    d = decide(req(STICKY, only, sticky_agent=1, tried={1}, sticky_dials_made=1, dials_per_agent=1,
                   sticky_declined=True))
    assert d == Queue(reason="every eligible agent tried", reset_tried=True)
    again = decide(req(STICKY, only, sticky_agent=1, dials_per_agent=1))
    assert isinstance(again, Offer) and again.user_id == 1 and again.sticky_dial


def test_sticky_fallback_rotates_over_everyone_untried() -> None:
    agents = [agent(1), agent(2), agent(3), agent(4)]
    pointer: int | None = 2
    picks = []
    for _ in range(4):
        d = decide(req(STICKY, agents, pointer, sticky_agent=3, tried={3}, sticky_declined=True))
        assert isinstance(d, Offer) and not d.sticky_dial
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    assert picks == [4, 1, 2, 4]


def test_sticky_declined_falls_back_immediately() -> None:
    agents = [agent(1), agent(2)]
    d = decide(
        req(STICKY, agents, sticky_agent=1, tried={1}, sticky_dials_made=0, dials_per_agent=3, sticky_declined=True)
    )
    assert d == Offer(
        user_id=2, new_rotation_pointer=2, sticky_dial=False, reason="sticky fallback: round robin"
    )


@pytest.mark.parametrize(
    "sticky_state",
    [
        agent(1, status="away"),
        agent(1, status="offline"),
        agent(1, active=2, cap=2),
        agent(1, pending=True),
        agent(1, licensed=False),
    ],
)
def test_sticky_not_eligible_falls_back(sticky_state: AgentSnapshot) -> None:
    agents = [sticky_state, agent(2), agent(3)]
    d = decide(req(STICKY, agents, pointer=2, sticky_agent=1, dials_per_agent=3))
    assert d == Offer(
        user_id=3, new_rotation_pointer=3, sticky_dial=False, reason="sticky fallback: round robin"
    )


def test_sticky_agent_left_inbox_falls_back() -> None:
    d = decide(req(STICKY, [agent(2), agent(3)], sticky_agent=1, dials_per_agent=2))
    assert offered(d) == 2


def test_sticky_agent_in_tried_is_never_redialled() -> None:
    # Inconsistent caller state: the tried set wins over remaining dials.
    d = decide(req(STICKY, [agent(1), agent(2)], sticky_agent=1, tried={1}, dials_per_agent=3))
    assert offered(d) == 2


def test_sticky_zero_dials_means_straight_fallback() -> None:
    d = decide(req(STICKY, [agent(1), agent(2)], sticky_agent=1, dials_per_agent=0, pointer=1))
    assert offered(d) == 2 and isinstance(d, Offer) and not d.sticky_dial


def test_sticky_fallback_respects_tried_and_resets() -> None:
    agents = [agent(1), agent(2), agent(3)]
    base = {"sticky_agent": 1, "sticky_dials_made": 2, "dials_per_agent": 2}
    assert offered(decide(req(STICKY, agents, tried={1, 2}, **base))) == 3
    d = decide(req(STICKY, agents, tried={1, 2, 3}, **base))
    assert d == Queue(reason="every eligible agent tried", reset_tried=True)


def test_sticky_exhausted_and_no_other_agent_is_offered_to_the_sticky_agent_in_fallback() -> None:
    # Excluding the sticky agent here left the customer waiting while it was free.
    agents = [agent(1), agent(2, status="away")]
    d = decide(req(STICKY, agents, sticky_agent=1, sticky_dials_made=1, dials_per_agent=1))
    assert d == Offer(user_id=1, new_rotation_pointer=1, sticky_dial=False, reason="sticky fallback: round robin")


def test_sticky_nobody_eligible() -> None:
    d = decide(req(STICKY, [agent(1, status="offline")], sticky_agent=1, dials_per_agent=2))
    assert isinstance(d, Queue) and not d.reset_tried


# --- longest idle ----------------------------------------------------------------

LI = AssignmentMode.LONGEST_IDLE


def test_longest_idle_earliest_wins() -> None:
    agents = [
        agent(1, idle=T0 + timedelta(minutes=5)),
        agent(2, idle=T0),
        agent(3, idle=T0 + timedelta(hours=1)),
    ]
    d = pick_longest_idle(req(LI, agents, pointer=2))
    assert d == Offer(
        user_id=2,
        new_rotation_pointer=2,
        sticky_dial=False,
        reason=f"longest idle since {T0.isoformat()}",
    )


def test_longest_idle_full_ordering_via_tried() -> None:
    agents = [agent(i, idle=T0 - timedelta(minutes=m)) for i, m in [(1, 3), (2, 10), (3, 1), (4, 7)]]
    tried: set[int] = set()
    order = []
    for _ in range(4):
        uid = offered(decide(req(LI, agents, tried=tried)))
        order.append(uid)
        tried.add(uid)
    assert order == [2, 4, 1, 3]


def test_longest_idle_ties_round_robin() -> None:
    agents = [
        agent(1, idle=T0),
        agent(2, idle=T0 + timedelta(seconds=1)),
        agent(3, idle=T0),
        agent(4, idle=T0),
    ]
    pointer: int | None = None
    picks = []
    for _ in range(4):
        d = decide(req(LI, agents, pointer))
        assert isinstance(d, Offer)
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    assert picks == [1, 3, 4, 1]


def test_longest_idle_excludes_busy_under_capacity() -> None:
    agents = [agent(1, idle=T0 - timedelta(days=1), active=1, cap=5), agent(2, idle=T0)]
    assert offered(decide(req(LI, agents))) == 2


def test_longest_idle_all_busy_queues_without_reset() -> None:
    agents = [agent(1, idle=T0, active=1), agent(2, idle=T0, active=2)]
    d = decide(req(LI, agents, tried={1}))
    assert d == Queue(reason="no idle eligible agent", reset_tried=False)


def test_longest_idle_skips_ineligible() -> None:
    agents = [agent(1, idle=T0 - timedelta(hours=2), status="away"), agent(2, idle=T0)]
    assert offered(decide(req(LI, agents))) == 2


def test_longest_idle_none_counts_as_never_active() -> None:
    agents = [agent(1, idle=T0 - timedelta(days=30)), agent(2, idle=None)]
    d = decide(req(LI, agents))
    assert d == Offer(
        user_id=2, new_rotation_pointer=2, sticky_dial=False, reason="longest idle never active"
    )


def test_longest_idle_tried_excluded() -> None:
    agents = [agent(1, idle=T0), agent(2, idle=T0 + timedelta(minutes=1))]
    assert offered(decide(req(LI, agents, tried={1}))) == 2


# --- determinism / misc ----------------------------------------------------------


@pytest.mark.parametrize("mode", list(AssignmentMode))
def test_agent_order_in_snapshot_does_not_matter(mode: AssignmentMode) -> None:
    agents = [agent(i, prof=10 * (i % 3), idle=T0 + timedelta(minutes=i % 2)) for i in range(1, 7)]
    kw = {"sticky_agent": 4, "dials_per_agent": 1, "sticky_dials_made": 1}
    a = decide(req(mode, agents, pointer=3, tried={2}, **kw))
    b = decide(req(mode, list(reversed(agents)), pointer=3, tried={2}, **kw))
    assert a == b


# --- wait queue ------------------------------------------------------------------


def test_queue_order_oldest_first_ties_by_id() -> None:
    items = [(7, T0 + timedelta(seconds=5)), (3, T0), (9, T0), (1, T0 + timedelta(seconds=1))]
    assert queue_order(items) == [3, 9, 1, 7]


def test_queue_order_empty_and_generator() -> None:
    assert queue_order([]) == []
    assert queue_order((i, T0) for i in (5, 2, 8)) == [2, 5, 8]
