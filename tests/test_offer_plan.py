"""A routing pass as data (`actors/offer_plan.py`): the offers one pass plans before any agent is asked."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from actors.offer_plan import RoutingSettings, plan_offers
from actors.transaction_state import TxState
from routing import AgentSnapshot, AssignmentMode, Offer, Queue, RoutingRequest, decide
from tests.test_routing_properties import T0, agent_lists


@st.composite
def conversations(draw: st.DrawFn, members: list[int]) -> list[TxState]:
    count = draw(st.integers(0, 8))
    txs = []
    for tx_id in range(1, count + 1):
        tried = tuple(draw(st.lists(st.sampled_from(members), max_size=3, unique=True))) if members else ()
        txs.append(TxState(id=tx_id, customer_id=100 + tx_id, state=draw(st.sampled_from(["queued", "queued", "offered",
                                                                                            "assigned"])),
                           waiting_since=T0 + timedelta(seconds=draw(st.integers(0, 5))), tried=tried,
                           sticky_agent=draw(st.none() | st.sampled_from(members)) if members else None,
                           customer={"name": f"c{tx_id}"}))
    return txs


@st.composite
def passes(draw: st.DrawFn) -> tuple[RoutingSettings, list[AgentSnapshot], list[TxState]]:
    agents = draw(agent_lists(max_size=6))
    txs = draw(conversations([a.user_id for a in agents]))
    settings = RoutingSettings(inbox_id=9, inbox_name="Support", mode=draw(st.sampled_from(list(AssignmentMode))),
                               reassign_after_s=draw(st.integers(1, 900)), dials_per_agent=draw(st.integers(1, 3)),
                               rotation_pointer=draw(st.none() | st.integers(-60, 60)))
    return settings, agents, txs


@given(passes())
def test_a_pass_offers_each_eligible_agent_at_most_one_queued_conversation(
        setup: tuple[RoutingSettings, list[AgentSnapshot], list[TxState]]) -> None:
    settings, agents, txs = setup
    planned = plan_offers(settings, agents, txs, T0)
    eligible = {a.user_id for a in agents if a.is_eligible}
    assert len({p.user_id for p in planned}) == len(planned) <= len(eligible)
    assert {p.user_id for p in planned} <= eligible
    assert len({p.waiting.id for p in planned}) == len(planned)
    for plan in planned:
        assert plan.waiting in txs and plan.waiting.state == "queued"
        assert plan.offered.state == "offered" and plan.offered.offered_to == plan.user_id
        assert plan.offered.offer_seq == plan.waiting.offer_seq + 1 and plan.offer["offer_id"] == plan.offer_id
        assert plan.offer["transaction_id"] == plan.waiting.id and plan.offer["inbox_id"] == settings.inbox_id
        assert plan.offered.offer_expires_at == T0 + timedelta(seconds=settings.reassign_after_s)
    # Oldest first, as the queue is served.
    assert [p.waiting.id for p in planned] == [p.waiting.id for p in sorted(planned, key=lambda p: (
        p.waiting.waiting_since, p.waiting.id))]
    if settings.mode == AssignmentMode.MANUAL:
        assert planned == []


@given(passes())
def test_the_first_offer_of_a_pass_is_what_routing_decides_for_the_oldest_offerable_conversation(
        setup: tuple[RoutingSettings, list[AgentSnapshot], list[TxState]]) -> None:
    settings, agents, txs = setup
    planned = plan_offers(settings, agents, txs, T0)
    queued = sorted((tx for tx in txs if tx.state == "queued"), key=lambda tx: (tx.waiting_since, tx.id))
    for tx in queued:
        def request(tried: frozenset[int], tx: TxState = tx) -> RoutingRequest:
            return RoutingRequest(
                mode=settings.mode, agents=tuple(agents), rotation_pointer=settings.rotation_pointer, tried=tried,
                sticky_agent=tx.sticky_agent if settings.mode == AssignmentMode.STICKY else None,
                sticky_dials_made=tx.sticky_dials, dials_per_agent=settings.dials_per_agent,
                sticky_declined=tx.sticky_declined)

        decision = decide(request(frozenset(tx.tried)))
        if isinstance(decision, Queue) and decision.reset_tried:
            decision = decide(request(frozenset()))
        if isinstance(decision, Offer):
            assert planned and planned[0].waiting == tx and planned[0].user_id == decision.user_id
            expected = decision.new_rotation_pointer
            assert planned[0].rotation_pointer == (settings.rotation_pointer if expected is None else expected)
            return
    assert planned == []
