"""Assignment modes end to end: who gets offered which customer, through the real gateway, actors and store.

The pure decision functions are tested in test_routing_modes.py; here the whole system must make the
same choices with live presence, capacity, timers and edits.
"""

from __future__ import annotations

import threading

import ray

from tests.routing_support import Agent, Scenario, customer_id
from tests.support import query_db


def offered_to(sc: Scenario, customer: str, timeout: float = 15.0) -> tuple[int, int]:
    """Send a message from a new customer; (transaction id, agent offered)."""
    known = sc.tx_ids_of(customer)
    sc.send(customer, f"hi from {customer}")
    tx_id = sc.tx_of(customer, exclude=known, timeout=timeout)["id"]
    return tx_id, int(sc.wait_state(tx_id, "offered", timeout=timeout)["offered_to"])


def route_and_accept(sc: Scenario, agents: list[Agent], customer: str | None = None, timeout: float = 15.0) -> int:
    """A customer writes; whoever is offered accepts. Returns that agent's id."""
    by_id = {a.id: a for a in agents}
    tx_id, user_id = offered_to(sc, customer or customer_id(), timeout)
    sc.do(tx_id, "accept", by_id[user_id])
    return user_id


def test_round_robin_rotates_in_id_order_and_continues_where_it_left_off(sc: Scenario) -> None:
    a, b, c = sc.agents(3, max_concurrent=10)
    inbox = sc.inbox([c, a, b])  # listed out of order: rotation follows ascending user id
    team = [a, b, c]
    order = [route_and_accept(sc, team) for _ in range(4)]
    assert order == [a.id, b.id, c.id, a.id]

    # An unavailable agent is skipped; the rotation goes on from the last one offered.
    sc.status(b, "away")
    assert route_and_accept(sc, team) == c.id
    sc.status(b, "available")
    assert [route_and_accept(sc, team) for _ in range(2)] == [a.id, b.id]

    # Live edit: a newly joined agent takes its place in the rotation, which still continues after b.
    d = sc.agent(max_concurrent=10)
    sc.edit_inbox(inbox, agents=[{"user_id": u.id} for u in (a, b, c, d)])
    team.append(d)
    assert [route_and_accept(sc, team) for _ in range(3)] == [c.id, d.id, a.id]

    # The inbox actor restarts (its process dies): the rotation pointer was persisted.
    handle = ray.get_actor(f"inbox:{sc.org.id}:{inbox}", namespace=sc.gateway.namespace)
    ray.kill(handle, no_restart=False)
    # A restart takes a new process: on a loaded machine that alone can take longer than a routing step.
    assert [route_and_accept(sc, team, timeout=60) for _ in range(2)] == [b.id, c.id]


def test_proficiency_highest_wins_ties_rotate_and_live_edit(sc: Scenario) -> None:
    a, b, c = sc.agents(3, max_concurrent=10)
    team = [a, b, c]
    inbox = sc.inbox(team, mode="proficiency", proficiency={a.id: 5, b.id: 5, c.id: 1})
    assert [route_and_accept(sc, team) for _ in range(3)] == [a.id, b.id, a.id]

    # The lower-proficiency agent only gets work when nobody better is eligible.
    sc.status(a, "away")
    sc.status(b, "away")
    assert route_and_accept(sc, team) == c.id
    sc.status(a, "available")
    sc.status(b, "available")

    sc.edit_inbox(inbox, agents=[{"user_id": a.id, "proficiency": 5}, {"user_id": b.id, "proficiency": 5},
                                 {"user_id": c.id, "proficiency": 10}])
    assert [route_and_accept(sc, team) for _ in range(2)] == [c.id, c.id]
    # Declined by the best agent: the next best (a tie, in rotation after c) gets it.
    tx_id, user_id = offered_to(sc, customer_id())
    assert user_id == c.id
    sc.do(tx_id, "decline", c)
    assert sc.wait_state(tx_id, "offered")["offered_to"] == a.id
    # An edit while a's offer rings keeps the offer; a (now best) holds it, so the next best is offered.
    sc.edit_inbox(inbox, agents=[{"user_id": a.id, "proficiency": 7}, {"user_id": b.id, "proficiency": 5},
                                 {"user_id": c.id, "proficiency": 1}])
    assert route_and_accept(sc, team) == b.id
    assert sc.tx(tx_id)["state"] == "offered" and sc.tx(tx_id)["offered_to"] == a.id
    sc.do(tx_id, "accept", a)
    assert route_and_accept(sc, team) == a.id


def test_sticky_dials_last_agent_then_falls_back_and_moves_stickiness(sc: Scenario) -> None:
    a, b = sc.agents(2, max_concurrent=5)
    team = [a, b]
    inbox = sc.inbox(team, mode="sticky", reassign_after_s=1, dials_per_agent=2)
    customer = customer_id()

    # First transaction of the customer: plain round robin.
    tx1, first = offered_to(sc, customer)
    assert first == a.id
    sc.do(tx1, "accept", a)
    sc.do(tx1, "close", a)

    # Next transaction: the last agent is dialled twice (each offer 1 s), then someone else.
    sock_a = sc.socket(a)
    tx2, dialled = offered_to(sc, customer)
    assert dialled == a.id and tx2 != tx1
    trail = sc.wait_trail(tx2, "offered", count=3)
    assert trail[:6] == [("queued", None), ("offered", a.id), ("missed", a.id), ("offered", a.id),
                         ("missed", a.id), ("offered", b.id)]
    assert [e["detail"]["sticky_dial"] for e in sc.trail(tx2) if e["kind"] == "offered"] == [True, True, False]
    assert [e["transaction_id"] for e in sock_a.of_type("offer")] == [tx2, tx2]
    sc.do(tx2, "accept", b)
    sc.do(tx2, "close", b)
    assert query_db(sc.gateway, "SELECT s.user_id FROM sticky_agents s JOIN customers c ON c.id = s.customer_id "
                    "WHERE s.inbox_id = :i AND c.wa_id = :c",
                    i=inbox, c=customer) == [(b.id,)]

    # Whoever handled it is the new sticky agent.
    tx3, sticky = offered_to(sc, customer)
    assert sticky == b.id
    assert sc.trail(tx3)[1]["detail"]["sticky_dial"] is True
    sc.do(tx3, "accept", b)
    sc.do(tx3, "close", b)

    # Sticky agent unavailable: no dial, round robin among the others straight away.
    sc.status(b, "away")
    tx4, other = offered_to(sc, customer)
    assert other == a.id
    assert [k for k, _ in sc.kinds(tx4)] == ["queued", "offered"]
    sc.do(tx4, "accept", a)
    assert query_db(sc.gateway, "SELECT s.user_id FROM sticky_agents s JOIN customers c ON c.id = s.customer_id "
                    "WHERE s.inbox_id = :i AND c.wa_id = :c",
                    i=inbox, c=customer) == [(a.id,)]

    # A different customer is not sticky to anyone.
    sc.status(b, "available")
    _, fresh = offered_to(sc, customer_id())
    assert fresh == b.id  # round robin continues after a


def test_longest_idle_picks_the_longest_idle_and_skips_busy_agents(sc: Scenario) -> None:
    a, b, c = sc.agents(3, available=False, max_concurrent=3)
    team = [a, b, c]
    # Availability order c, a, b: c has been idle the longest, whatever the ids say.
    for agent in (c, a, b):
        sc.status(agent, "available")
    sc.inbox(team, mode="longest_idle")

    tx1, first = offered_to(sc, customer_id())
    assert first == c.id
    sc.do(tx1, "accept", c)
    # c is busy (though under capacity): excluded until its chat ends.
    tx2, second = offered_to(sc, customer_id())
    assert second == a.id
    sc.do(tx2, "accept", a)

    sc.do(tx1, "close", c)  # c's idle clock restarts now: b has waited longer
    tx3, third = offered_to(sc, customer_id())
    assert third == b.id
    sc.do(tx3, "accept", b)
    tx4, fourth = offered_to(sc, customer_id())
    assert fourth == c.id  # the only agent without a chat
    sc.do(tx4, "accept", c)

    # Everyone busy: the next customer waits although every agent has spare capacity.
    waiting = customer_id()
    sc.send(waiting)
    tx5 = sc.tx_of(waiting)["id"]
    assert sc.tx(tx5)["state"] == "queued"
    # Chats end in the order b, a: b has been idle the longest, so it gets the waiting customer.
    sc.do(tx3, "close", b)
    assert sc.wait_state(tx5, "offered")["offered_to"] == b.id
    sc.do(tx2, "close", a)
    sc.do(tx5, "accept", b)
    _, sixth = offered_to(sc, customer_id())
    assert sixth == a.id


def test_longest_idle_skips_an_agent_who_took_a_conversation_in_another_inbox(sc: Scenario) -> None:
    """An agent taking a conversation in one inbox does not tell its Longest Idle inbox (only what makes it more
    eligible is pushed): that inbox, still seeing it idle the longest, asks it to hold an offer, sees from the answer
    that it is busy and offers the next idle agent. Once its chat ends, it is heard of again."""
    a, b = sc.agents(2, available=False, max_concurrent=3)
    for agent in (a, b):  # a idle the longest
        sc.status(agent, "available")
    sc.inbox([a], number=0)
    longest_idle = sc.inbox([a, b], mode="longest_idle", number=1)
    watch = sc.socket(a)

    first = customer_id()
    sc.send(first, number=0)
    taken = sc.wait_state(sc.tx_of(first)["id"], "offered", offered_to=a.id)["id"]
    sc.do(taken, "accept", a)

    waiting = customer_id()
    sc.send(waiting, number=1)
    tx_id = sc.tx_of(waiting, inbox_id=longest_idle)["id"]
    assert sc.wait_state(tx_id, "offered")["offered_to"] == b.id
    sc.do(tx_id, "accept", b)
    assert [kind for kind, _ in sc.kinds(tx_id)].count("offered") == 1
    assert tx_id not in {e["transaction_id"] for e in watch.of_type("offer")}

    sc.do(taken, "close", a)  # idle again: the Longest Idle inbox hears of it
    later = customer_id()
    sc.send(later, number=1)
    assert sc.wait_state(sc.tx_of(later, inbox_id=longest_idle)["id"], "offered")["offered_to"] == a.id


def test_an_inbox_switched_to_longest_idle_orders_its_agents_by_their_idle_time_now(sc: Scenario) -> None:
    """Agents tell how long they have been idle only to the inboxes whose mode orders by it. A round-robin inbox
    whose agent finished a chat in another inbox is not told that the agent's idle clock restarted; switched to
    Longest Idle, it asks its agents for their snapshots again, and the agent idle the longest is offered."""
    b, a = sc.agents(2, available=False, max_concurrent=3)
    rotating = sc.inbox([a, b], number=0)
    other = sc.inbox([b], number=1)
    for agent in (b, a):  # b available first: idle the longest, until its chat below (both inboxes are told)
        sc.status(agent, "available")

    chat = customer_id()
    sc.send(chat, number=1)
    tx_id = sc.wait_state(sc.tx_of(chat, inbox_id=other)["id"], "offered", offered_to=b.id)["id"]
    sc.do(tx_id, "accept", b)
    sc.do(tx_id, "close", b)  # b idle since now: a is idle the longest

    sc.edit_inbox(rotating, assignment_mode="longest_idle")
    waiting = customer_id()
    sc.send(waiting, number=0)
    assert sc.wait_state(sc.tx_of(waiting, inbox_id=rotating)["id"], "offered")["offered_to"] == a.id


def test_manual_mode_offers_nothing_and_first_claim_wins(sc: Scenario) -> None:
    team = sc.agents(4, max_concurrent=5)
    outsider = sc.agent()
    inbox = sc.inbox(team, mode="manual")
    socks = {a.id: sc.socket(a) for a in team}

    for round_ in range(3):
        customer = customer_id()
        sc.send(customer, f"manual {round_}")
        tx_id = sc.tx_of(customer)["id"]
        queue = sc.queue(inbox, team[round_].token)  # visible to the inbox's agents
        assert [(q["id"], q["state"], q["offered_to"], q["first_message"]) for q in queue] == \
            [(tx_id, "queued", None, f"manual {round_}")]
        assert all(sc.agent_view(a)["pending_offer"] is None for a in team)
        assert sc.act(tx_id, "claim", outsider).status_code == 403

        barrier = threading.Barrier(len(team))
        results: dict[int, int] = {}

        def claim(agent: Agent, tx: int = tx_id, box: dict[int, int] = results,
                  gate: threading.Barrier = barrier) -> None:
            gate.wait()
            box[agent.id] = sc.act(tx, "claim", agent).status_code

        threads = [threading.Thread(target=claim, args=(a,)) for a in team]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results.values()) == [200, 409, 409, 409], results
        winner = next(uid for uid, code in results.items() if code == 200)
        assert sc.tx(tx_id)["agent_id"] == winner and sc.tx(tx_id)["state"] == "assigned"
        assert socks[winner].next("assigned")["transaction_id"] == tx_id
        assert sc.kinds(tx_id) == [("queued", None), ("claimed", winner)]
        assert sc.queue(inbox) == []
        assert sc.act(tx_id, "claim", team[0]).status_code == 409

    # Nobody was ever offered anything in manual mode.
    assert all(sock.of_type("offer") == [] for sock in socks.values())


def test_sticky_agent_who_declines_is_not_dialled_again_until_a_new_round(sc: Scenario) -> None:
    a, b = sc.agents(2, max_concurrent=5)
    sc.inbox([a, b], mode="sticky", reassign_after_s=30, dials_per_agent=3)
    customer = customer_id()
    tx1, first = offered_to(sc, customer)
    assert first == a.id
    sc.do(tx1, "accept", a)
    sc.do(tx1, "close", a)
    # The sticky agent refuses explicitly: the remaining dials are not used, the others get it.
    tx2, dialled = offered_to(sc, customer)
    assert dialled == a.id
    sc.do(tx2, "decline", a)
    sc.wait_state(tx2, "offered", offered_to=b.id)
    assert sc.kinds(tx2) == [("queued", None), ("offered", a.id), ("declined", a.id), ("offered", b.id)]
    # And once b declines too, everyone passed: a new round starts at once, with the sticky agent's dials.
    sc.do(tx2, "decline", b)
    sc.wait_state(tx2, "offered", offered_to=a.id)
    offered = [e for e in sc.trail(tx2) if e["kind"] == "offered"]
    assert offered[-1]["detail"]["new_round"] is True and offered[-1]["detail"]["sticky_dial"] is True
