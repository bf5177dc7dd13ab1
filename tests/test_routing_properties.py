"""Hypothesis property tests for the routing invariants."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from routing import (
    AgentSnapshot,
    AssignmentMode,
    Offer,
    Queue,
    RoutingRequest,
    decide,
    queue_order,
    rotate_after,
)
from routing.presence import MissedOutcome, after_missed_offer
from tests.examples import examples

T0 = datetime(2025, 1, 1, tzinfo=UTC)

idle_times = st.one_of(st.none(), st.integers(0, 4).map(lambda m: T0 + timedelta(minutes=m)))


@st.composite
def agent_snapshots(draw: st.DrawFn, user_id: int, order_key: int) -> AgentSnapshot:
    # Few distinct values on purpose: proficiency / idle_since ties must be common.
    proficiency = draw(st.integers(1, 4).map(lambda p: p * 25))
    idle_since = draw(idle_times)
    if draw(st.sampled_from([True, True, False])):
        # Forced-eligible agent, so offers are common; busy-but-under-capacity included.
        active = draw(st.sampled_from([0, 0, 1, 2]))
        status, cap, pending, licensed = "available", draw(st.integers(active + 1, 4)), False, True
    else:
        # Arbitrary agent: mostly ineligible for one reason or another.
        status = draw(st.sampled_from(["available", "away", "offline"]))
        active, cap = draw(st.integers(0, 3)), draw(st.integers(0, 4))
        pending, licensed = draw(st.booleans()), draw(st.booleans())
    return AgentSnapshot(
        user_id=user_id,
        order_key=order_key,
        status=status,
        active_count=active,
        max_concurrent=cap,
        has_pending_offer=pending,
        proficiency=proficiency,
        idle_since=idle_since,
        licensed=licensed,
    )


@st.composite
def agent_lists(draw: st.DrawFn, min_size: int = 0, max_size: int = 8) -> list[AgentSnapshot]:
    uids = draw(st.lists(st.integers(1, 40), min_size=min_size, max_size=max_size, unique=True))
    # order_key is unique per inbox but independent of user_id.
    keys = draw(st.lists(st.integers(-50, 50), min_size=len(uids), max_size=len(uids), unique=True))
    return [draw(agent_snapshots(uid, key)) for uid, key in zip(uids, keys, strict=True)]


@st.composite
def requests(draw: st.DrawFn, mode: AssignmentMode | None = None) -> RoutingRequest:
    agents = draw(agent_lists())
    uids = [a.user_id for a in agents]
    # Tried may contain non-members (agents who left the inbox since).
    stranger = st.integers(41, 45)
    member_or_stranger = st.sampled_from(uids) | stranger if uids else stranger
    sticky = (st.sampled_from(uids) | st.sampled_from(uids) | stranger) if uids else stranger
    dials = draw(st.integers(0, 3))
    return RoutingRequest(
        mode=draw(st.sampled_from(list(AssignmentMode))) if mode is None else mode,
        agents=tuple(agents),
        rotation_pointer=draw(st.none() | st.integers(-60, 60)),
        tried=frozenset(draw(st.lists(member_or_stranger, max_size=6))),
        sticky_agent=draw(st.none() | sticky),
        sticky_dials_made=draw(st.integers(0, dials + 1)),
        dials_per_agent=dials,
        sticky_declined=draw(st.sampled_from([False, False, False, True])),
    )


@st.composite
def sticky_requests(draw: st.DrawFn) -> RoutingRequest:
    """Sticky requests where the sticky agent is usually a member with dials left."""
    r = draw(requests(AssignmentMode.STICKY))
    uids = [a.user_id for a in r.agents]
    keep_as_drawn = draw(st.sampled_from([True, False, False, False]))
    if not uids or keep_as_drawn:
        return r
    dials = draw(st.integers(1, 3))
    return replace(
        r,
        sticky_agent=draw(st.sampled_from(uids)),
        dials_per_agent=dials,
        sticky_dials_made=draw(st.integers(0, dials)),
        tried=r.tried if draw(st.booleans()) else frozenset(),
    )


# Every mode, plus extra sticky cases that actually reach the redial branch.
any_requests = st.one_of(requests(), sticky_requests())


def by_id(request: RoutingRequest) -> dict[int, AgentSnapshot]:
    return {a.user_id: a for a in request.agents}


def sticky_redial_allowed(r: RoutingRequest) -> bool:
    """The spec's redial condition, restated independently of the implementation."""
    # Only sticky mode dials a sticky agent; the other modes ignore one if given.
    if r.mode is not AssignmentMode.STICKY or r.sticky_agent is None:
        return False
    if r.sticky_declined or r.sticky_dials_made >= r.dials_per_agent:
        return False
    agent = by_id(r).get(r.sticky_agent)
    return agent is not None and agent.is_eligible and r.sticky_agent not in r.tried


def offer_pool(r: RoutingRequest) -> list[AgentSnapshot]:
    """Agents the mode may offer to this round (before the tried rule), sticky redial aside."""
    eligible = [a for a in r.agents if a.is_eligible]
    if r.mode is AssignmentMode.LONGEST_IDLE:
        return [a for a in eligible if a.active_count == 0]
    # Sticky mode's fallback is round robin among ALL eligible agents, the sticky agent included.
    return eligible


def idle_key(a: AgentSnapshot) -> tuple[int, datetime]:
    return (0, T0) if a.idle_since is None else (1, a.idle_since)


@settings(max_examples=examples(400))
@given(any_requests)
def test_offer_names_an_eligible_untried_member(r: RoutingRequest) -> None:
    d = decide(r)
    if isinstance(d, Offer):
        members = by_id(r)
        assert d.user_id in members
        assert members[d.user_id].is_eligible
        assert d.user_id not in r.tried


@settings(max_examples=examples(400))
@given(any_requests)
def test_offer_pointer_contract(r: RoutingRequest) -> None:
    d = decide(r)
    if isinstance(d, Offer):
        if d.sticky_dial:
            assert r.mode is AssignmentMode.STICKY
            assert d.user_id == r.sticky_agent
            assert d.new_rotation_pointer == r.rotation_pointer
        else:
            assert d.new_rotation_pointer == by_id(r)[d.user_id].order_key
        assert d.reason


@given(requests(AssignmentMode.MANUAL))
def test_manual_never_offers(r: RoutingRequest) -> None:
    assert decide(r) == Queue(reason="manual mode", reset_tried=False)


@given(requests(AssignmentMode.PROFICIENCY))
def test_proficiency_offers_max_among_eligible_untried(r: RoutingRequest) -> None:
    d = decide(r)
    fresh = [a for a in r.agents if a.is_eligible and a.user_id not in r.tried]
    if fresh:
        assert isinstance(d, Offer)
        assert by_id(r)[d.user_id].proficiency == max(a.proficiency for a in fresh)
    else:
        assert isinstance(d, Queue)


@given(requests(AssignmentMode.LONGEST_IDLE))
def test_longest_idle_offers_min_idle_among_eligible_untried_idle(r: RoutingRequest) -> None:
    d = decide(r)
    fresh = [a for a in r.agents if a.is_eligible and a.active_count == 0 and a.user_id not in r.tried]
    if fresh:
        assert isinstance(d, Offer)
        chosen = by_id(r)[d.user_id]
        assert chosen.active_count == 0
        assert idle_key(chosen) == min(idle_key(a) for a in fresh)
    else:
        assert isinstance(d, Queue)


@settings(max_examples=examples(300))
@given(sticky_requests())
def test_sticky_dials_iff_allowed_and_fallback_is_round_robin_over_everyone_untried(r: RoutingRequest) -> None:
    d = decide(r)
    if sticky_redial_allowed(r):
        assert isinstance(d, Offer) and d.sticky_dial and d.user_id == r.sticky_agent
    elif isinstance(d, Offer):
        assert not d.sticky_dial
        fresh = sorted(a.order_key for a in r.agents if a.is_eligible and a.user_id not in r.tried)
        after = [k for k in fresh if r.rotation_pointer is None or k > r.rotation_pointer]
        assert by_id(r)[d.user_id].order_key == (after or fresh)[0]


@settings(max_examples=examples(400))
@given(any_requests)
def test_after_everyone_passed_a_new_round_offers_whenever_anyone_is_offerable(r: RoutingRequest) -> None:
    """The inbox's new-round rule: a reset decision is followed at once by deciding with a clean slate,
    which offers whenever the mode has anyone offerable: nobody waits while an agent is free."""
    d = decide(r)
    if not (isinstance(d, Queue) and d.reset_tried):
        return
    fresh = replace(r, tried=frozenset(), sticky_dials_made=0, sticky_declined=False)
    again = decide(fresh)
    assert isinstance(again, Offer), (r, again)
    assert again.user_id in {a.user_id for a in offer_pool(fresh)} | (
        {r.sticky_agent} if sticky_redial_allowed(fresh) else set())
    if sticky_redial_allowed(fresh):
        assert again.sticky_dial and again.user_id == r.sticky_agent


@given(st.integers(0, 200), st.integers(0, 100))
def test_missed_offers_set_away_exactly_at_the_threshold(missed: int, threshold: int) -> None:
    outcome = after_missed_offer(missed, threshold)
    if threshold == 0:
        assert outcome == MissedOutcome(missed_in_a_row=missed + 1, set_away=False)
    elif missed + 1 >= threshold:
        assert outcome == MissedOutcome(missed_in_a_row=0, set_away=True)
    else:
        assert outcome == MissedOutcome(missed_in_a_row=missed + 1, set_away=False)


@given(st.integers(1, 20), st.lists(st.sampled_from(["missed", "answered"]), max_size=60))
def test_an_agent_is_set_away_only_after_threshold_consecutive_misses(threshold: int, answers: list[str]) -> None:
    count, run = 0, 0
    for answer in answers:
        if answer == "answered":
            count, run = 0, 0
            continue
        run += 1
        outcome = after_missed_offer(count, threshold)
        assert outcome.set_away == (run == threshold)
        count = outcome.missed_in_a_row
        if outcome.set_away:
            run = 0


@settings(max_examples=examples(400))
@given(any_requests)
def test_queue_reset_only_when_every_eligible_agent_tried(r: RoutingRequest) -> None:
    d = decide(r)
    pool = offer_pool(r)
    if r.mode is AssignmentMode.MANUAL:
        return
    if isinstance(d, Queue) and d.reset_tried:
        assert pool, "reset with nobody eligible would loop forever"
        assert all(a.user_id in r.tried for a in pool)
        # Every eligible agent is tried, or excluded by the mode itself: busy agents in longest_idle.
        for a in r.agents:
            if a.is_eligible and a.user_id not in r.tried:
                assert r.mode is AssignmentMode.LONGEST_IDLE and a.active_count > 0
    # Conversely an untried offerable agent always gets an offer, and a fully tried
    # non-empty pool always asks for a reset.
    if any(a.user_id not in r.tried for a in pool) or sticky_redial_allowed(r):
        assert isinstance(d, Offer)
    elif pool:
        assert d == Queue(reason="every eligible agent tried", reset_tried=True)
    else:
        assert isinstance(d, Queue) and not d.reset_tried


@given(any_requests, st.randoms(use_true_random=False))
def test_decide_is_deterministic_and_order_independent(r: RoutingRequest, rnd: random.Random) -> None:
    shuffled = list(r.agents)
    rnd.shuffle(shuffled)
    assert decide(r) == decide(r)
    assert decide(r) == decide(replace(r, agents=tuple(shuffled)))


@st.composite
def rotation_setups(draw: st.DrawFn) -> tuple[list[AgentSnapshot], int | None]:
    agents = draw(agent_lists(min_size=1))
    # At least one eligible member, otherwise there is nothing to rotate.
    agents[0] = replace(
        agents[0],
        status="available",
        licensed=True,
        active_count=0,
        max_concurrent=1,
        has_pending_offer=False,
    )
    return agents, draw(st.none() | st.integers(-60, 60))


@settings(max_examples=examples(200))
@given(rotation_setups())
def test_round_robin_is_fair(setup: tuple[list[AgentSnapshot], int | None]) -> None:
    agents, pointer = setup
    eligible = {a.user_id for a in agents if a.is_eligible}
    k = len(eligible)
    picks: list[int] = []
    for _ in range(3 * k):
        d = decide(RoutingRequest(AssignmentMode.ROUND_ROBIN, tuple(agents), pointer, frozenset()))
        assert isinstance(d, Offer)
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    # Every window of k successive offers visits each eligible agent exactly once.
    for start in range(len(picks) - k + 1):
        window = picks[start : start + k]
        assert sorted(window) == sorted(eligible)


@settings(max_examples=examples(200))
@given(rotation_setups())
def test_proficiency_top_group_rotates_fairly(setup: tuple[list[AgentSnapshot], int | None]) -> None:
    agents, pointer = setup
    eligible = [a for a in agents if a.is_eligible]
    best = max(a.proficiency for a in eligible)
    top = sorted(a.user_id for a in eligible if a.proficiency == best)
    picks: list[int] = []
    for _ in range(2 * len(top)):
        d = decide(RoutingRequest(AssignmentMode.PROFICIENCY, tuple(agents), pointer, frozenset()))
        assert isinstance(d, Offer)
        picks.append(d.user_id)
        pointer = d.new_rotation_pointer
    for start in range(len(top) + 1):
        assert sorted(picks[start : start + len(top)]) == top


@given(agent_lists(min_size=1), st.none() | st.integers(-60, 60))
def test_rotate_after_picks_next_key_or_wraps(agents: list[AgentSnapshot], pointer: int | None) -> None:
    chosen = rotate_after(agents, pointer)
    keys = sorted(a.order_key for a in agents)
    later = [k for k in keys if pointer is not None and k > pointer]
    assert chosen.order_key == (later[0] if later else keys[0])


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 5).map(lambda s: T0 + timedelta(seconds=s)))))
def test_queue_order_is_sorted_permutation(items: list[tuple[int, datetime]]) -> None:
    order = queue_order(items)
    # A permutation of the input ids ...
    assert sorted(order) == sorted(tx for tx, _ in items)
    # ... in (waiting_since, id) order: oldest first, ties by id.
    keyed = [(since, tx) for tx, since in items]
    assert [tx for _, tx in sorted(keyed)] == order
