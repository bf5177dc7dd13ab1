"""Routing core v2, as a user sees it: nobody waits while an agent is free, offers are reservations with
ids that both sides agree on after lost replies and crashes, configuration and ownership live in the
store, and messages the gateway stored are routed whatever dies when.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray

from actors.agent_link import AgentLink
from actors.ray_directory import RayDirectory
from config.settings import Settings
from gateway.intake import store_delivery
from meta.webhook_parser import parse_webhook
from store import routing_repo as repo
from store.db import Database
from tests.routing_support import Agent, Scenario, customer_id
from tests.support import eventually, query_db, text_from

# How often a gateway sweeps the store for its inboxes (`WA_ROUTER_INBOX_SYNC_INTERVAL_S`, the tests' gateways keep it).
SWEEP_INTERVAL_S: float = Settings.model_fields["inbox_sync_interval_s"].default


def write_db(sc: Scenario, sql: str, **params: Any) -> None:
    """A raw write to the store, as another process (a dying gateway, another deployment) would make it."""
    from sqlalchemy import text

    async def run() -> None:
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                await session.execute(text(sql), params)
        finally:
            await db.dispose()

    asyncio.run(run())


def offered_to_the_first_of_two(sc: Scenario) -> tuple[Agent, Agent, int, int]:
    """Two agents in a round-robin inbox and a customer whose conversation is offered to the first."""
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b], reassign_after_s=60)
    customer = customer_id()
    sc.send(customer)
    tx_id = sc.tx_of(customer)["id"]
    sc.wait_state(tx_id, "offered", offered_to=a.id)
    return a, b, inbox, tx_id


def agent_actor(sc: Scenario, user_id: int) -> Any:
    return ray.get_actor(f"agent:{sc.org.id}:{user_id}", namespace=sc.gateway.namespace)


# ------------------------------------------------------------------ 1. nobody waits while an agent is free


def test_a_missed_offer_is_offered_again_at_once_to_the_only_available_agent(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    sc.inbox([a], reassign_after_s=1)
    sc.gateway.ok("PATCH", sc.org.path(""), sc.owner, json={"missed_offers_before_away": 0})
    sock = sc.socket(a)
    sc.send(customer_id(), "still there?")
    first = sock.next("offer")
    assert sock.next("offer_rescinded")["reason"] == "missed"
    second = sock.next("offer")  # no presence toggle, no other chat: the new round starts by itself
    assert second["transaction_id"] == first["transaction_id"] and second["offer_id"] != first["offer_id"]
    sc.do(first["transaction_id"], "accept", a)


def test_an_agent_who_misses_offers_in_a_row_is_set_away_and_the_customer_goes_to_a_present_one(
        sc: Scenario) -> None:
    absent, present = sc.agents(2)
    present_id = present.id
    sc.status(present, "away")
    inbox = sc.inbox([absent, present], reassign_after_s=1)
    org = sc.gateway.ok("PATCH", sc.org.path(""), sc.owner, json={"missed_offers_before_away": 2})
    assert org["missed_offers_before_away"] == 2
    sock = sc.socket(absent)
    sc.send(customer_id(), "hello?")
    tx_id = sock.next("offer")["transaction_id"]
    sock.next("offer")  # missed once, offered again (the only one available)
    status = sock.next("status")
    assert status["status"] == "away" and status["reason"] == "missed 2 offers in a row"
    view = sc.agent_view(absent)  # what a supervisor sees
    assert view["status"] == "away" and view["status_reason"] == "missed 2 offers in a row"
    assert sc.wait_state(tx_id, "queued")["offered_to"] is None
    assert [q["id"] for q in sc.queue(inbox)] == [tx_id]
    sc.status(present, "available")
    assert sc.wait_state(tx_id, "offered", offered_to=present_id)
    # Coming back clears the reason.
    assert sc.status(absent, "available")["status_reason"] is None


def test_the_organization_setting_is_validated_and_needs_a_supervisor(sc: Scenario) -> None:
    bad = sc.gateway.call("PATCH", sc.org.path(""), sc.owner, json={"missed_offers_before_away": 101})
    assert bad.status_code == 422 and "missed_offers_before_away" in bad.text
    (a,) = sc.agents(1)
    assert sc.gateway.call("PATCH", sc.org.path(""), a.token, json={"missed_offers_before_away": 1}).status_code == 403
    assert sc.gateway.ok("GET", sc.org.path(""), sc.owner)["missed_offers_before_away"] == 3  # the default


def test_sticky_agent_alone_is_offered_again_after_declining(sc: Scenario) -> None:
    a, b = sc.agents(2)
    sc.inbox([a, b], mode="sticky", dials_per_agent=1)
    sock_a = sc.socket(a)
    customer = customer_id()
    sc.send(customer, "first visit")
    tx1 = sock_a.next("offer")["transaction_id"]  # round robin starts with a
    sc.do(tx1, "accept", a)
    sc.do(tx1, "close", a)
    sc.status(b, "away")
    sc.send(customer, "second visit")
    tx2 = sock_a.next("offer", where=lambda e: e["transaction_id"] != tx1)["transaction_id"]
    sc.do(tx2, "decline", a)
    # Before: the fallback skipped the sticky agent and the customer waited forever.
    assert sock_a.next("offer", where=lambda e: e["transaction_id"] == tx2)
    sc.do(tx2, "accept", a)
    trail = sc.trail(tx2)
    assert [(e["kind"], e["agent_id"]) for e in trail] == [
        ("queued", None), ("offered", a.id), ("declined", a.id), ("offered", a.id), ("accepted", a.id)]
    assert trail[1]["detail"]["sticky_dial"] is True


# ------------------------------------------------------------------ 8. claims only in manual inboxes


def test_claims_are_refused_outside_manual_mode_naming_the_mode(sc: Scenario) -> None:
    a, b = sc.agents(2)
    sc.status(a, "away")
    sc.status(b, "away")
    sc.inbox([a, b], mode="proficiency")
    customer = customer_id()
    sc.send(customer)
    tx_id = sc.tx_of(customer)["id"]
    sc.status(a, "available")
    sc.wait_state(tx_id, "offered", offered_to=a.id)
    sc.status(b, "available")
    refused = sc.act(tx_id, "claim", b)
    assert refused.status_code == 409 and "proficiency" in refused.json()["detail"], refused.text


# ------------------------------------------------------------------ 4. reservations: ids, idempotency, lapses


def test_a_hold_the_inbox_never_commits_lapses_by_itself(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    inbox = sc.inbox([a], reassign_after_s=30)
    actor = agent_actor(sc, a.id)
    # An inbox that reserved and then died before committing (nothing of it is in the store).
    phantom = {"offer_id": "999999.phantom", "transaction_id": 999999, "inbox_id": inbox,
               "expires_at": "2000-01-01T00:00:00+00:00"}
    assert ray.get(actor.hold.remote(phantom))["ok"] is True
    assert ray.get(actor.hold.remote(phantom))["ok"] is True  # retried: same answer, one hold
    assert sc.agent_view(a)["pending_offer"]["transaction_id"] == 999999
    eventually(lambda: sc.agent_view(a)["pending_offer"] is None, what="the phantom hold to lapse")
    # A late follow-up for it changes nothing, and real offers reach the agent again.
    assert ray.get(actor.hold.remote(phantom))["ok"] is False
    with sc.socket(a) as sock:
        sc.send(customer_id())
        offer = sock.next("offer")
        sc.do(offer["transaction_id"], "accept", a)
    assert not any(e["type"] == "offer" and e["transaction_id"] == 999999 for e in sock.events)


def test_repeated_confirms_and_releases_are_idempotent_on_the_offer_id(sc: Scenario) -> None:
    (a,) = sc.agents(1, max_concurrent=2)
    sc.inbox([a], reassign_after_s=30)
    actor = agent_actor(sc, a.id)
    with sc.socket(a) as sock:
        sc.send(customer_id())
        offer = sock.next("offer")
        sc.do(offer["transaction_id"], "accept", a)
        sock.next("assigned")
        # The inbox retries a confirm whose reply was lost, and a release that arrives late.
        payload = {"transaction_id": offer["transaction_id"], "inbox_id": offer["inbox_id"], "kind": "accepted"}
        ray.get(actor.confirm.remote(offer["offer_id"], payload))
        ray.get(actor.release.remote(offer["offer_id"], "missed"))
        view = sc.agent_view(a)
        assert view["active_transactions"] == [offer["transaction_id"]] and view["pending_offer"] is None
        assert len(sock.of_type("assigned")) == 1 and not sock.of_type("offer_rescinded")


def test_an_agent_restarting_during_an_offer_is_not_taken_for_offline(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    sc.inbox([a], reassign_after_s=30)
    ray.kill(agent_actor(sc, a.id), no_restart=False)  # a crash: Ray restarts it
    customer = customer_id()
    sc.send(customer)
    tx_id = sc.tx_of(customer)["id"]
    # Before: one unreachable call made the inbox treat the agent as offline until it toggled presence.
    sc.wait_state(tx_id, "offered", offered_to=a.id)
    assert sc.do(tx_id, "accept", a)["agent_id"] == a.id


def test_inbox_and_agent_agree_after_the_inbox_restarts_between_reserve_and_commit(sc: Scenario) -> None:
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b], reassign_after_s=30)
    sc.send(customer_id())  # the inbox actor comes to life (offering to a)
    actor = agent_actor(sc, b.id)
    phantom = {"offer_id": "1.lost", "transaction_id": 1, "inbox_id": inbox,
               "expires_at": "2999-01-01T00:00:00+00:00"}
    assert ray.get(actor.hold.remote(phantom))["ok"] is True
    # The inbox restarts: it has every member agent reconcile with the store, which knows no such offer.
    name = f"inbox:{sc.org.id}:{inbox}"
    eventually(lambda: name in {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)},
               what="the inbox actor")
    ray.kill(ray.get_actor(name, namespace=sc.gateway.namespace), no_restart=False)
    eventually(lambda: sc.agent_view(b)["pending_offer"] is None, timeout=30, what="the phantom hold dropped")


# ------------------------------------------------------------------ 5. snapshot order is per agent, not by clock


def test_snapshots_are_ordered_by_activation_epoch_and_sequence_not_wall_clock() -> None:
    link = AgentLink(1, 1, Settings(), lambda: RayDirectory(Settings()), lambda: None)
    base = {"user_id": 5, "status": "available", "max_concurrent": 1, "active_count": 0,
            "has_pending_offer": False, "idle_since": None}
    link.load(frozenset({5}), {5: base})
    assert link.update({**base, "version": [1, 7], "max_concurrent": 2})
    assert not link.update({**base, "status": "away", "version": [1, 6]})  # overtaken: ignored
    assert link.status_of(5) == "available"
    # A restarted agent (next epoch) wins whatever its clock or sequence says.
    assert link.update({**base, "status": "away", "version": [2, 1]})
    assert link.status_of(5) == "away"
    # Reloading the configuration keeps what the agent pushed over what the store says.
    link.load(frozenset({5}), {5: base})
    assert link.status_of(5) == "away"


# ------------------------------------------------------------------ 7. configuration changes always arrive


def test_an_agent_removed_without_notification_loses_the_offer_to_the_live_inbox(sc: Scenario) -> None:
    a, b, inbox, tx_id = offered_to_the_first_of_two(sc)
    # What a gateway that died right after its commit leaves behind: the change, no notification.
    write_db(sc, "DELETE FROM inbox_agents WHERE inbox_id = :inbox AND user_id = :user", inbox=inbox, user=a.id)
    write_db(sc, "UPDATE inboxes SET config_version = config_version + 1 WHERE id = :inbox", inbox=inbox)
    sc.wait_state(tx_id, "offered", offered_to=b.id)
    rescinded = [e for e in sc.trail(tx_id) if e["kind"] == "rescinded"]
    assert rescinded and rescinded[0]["agent_id"] == a.id and rescinded[0]["detail"]["reason"] == "agent left the inbox"


# ------------------------------------------------------------------ 3. every stored message is routed


def test_a_message_stored_but_never_forwarded_reaches_the_live_inbox(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    inbox = sc.inbox([a], reassign_after_s=60)
    warm = customer_id()
    sc.send(warm, "first")
    sc.wait_state(sc.tx_of(warm)["id"], "offered", offered_to=a.id)
    # The gateway's intake commits a message, then dies before forwarding it to the (live) inbox actor.
    late = customer_id()
    payload = text_from(sc.org, 0, late, "committed, never forwarded")

    async def intake() -> None:
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                result = await store_delivery(session, sc.org.id, parse_webhook(payload))
                assert result.new_message_count == 1
        finally:
            await db.dispose()

    asyncio.run(intake())
    tx = sc.tx_of(late)
    assert tx["inbox_id"] == inbox
    assert [m["summary"] for m in sc.tx(tx["id"])["messages"]] == ["committed, never forwarded"]


def test_a_follow_up_forwarded_to_the_live_inbox_reaches_the_agent_as_the_store_holds_it(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    inbox = sc.inbox([a], reassign_after_s=60)
    customer = customer_id()
    sc.send(customer, "first")
    tx_id = sc.tx_of(customer)["id"]
    sc.wait_state(tx_id, "offered", offered_to=a.id)
    with sc.socket(a) as socket:
        sc.do(tx_id, "accept", a)
        # The conversation is open in the inbox's memory: the forward is attached without a read first.
        sc.send(customer, "second")
        pushed = socket.next("message", where=lambda e: e["message"]["summary"] == "second")

    async def from_store() -> dict[str, Any]:
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                return (await repo.messages_except(session, inbox, tx_id, ()))[-1]
        finally:
            await db.dispose()

    assert pushed["transaction_id"] == tx_id
    assert pushed["message"] == asyncio.run(from_store())


def test_a_forward_naming_a_customer_the_store_no_longer_gives_the_message_is_routed_as_stored(
        sc: Scenario) -> None:
    (a,) = sc.agents(1)
    inbox = sc.inbox([a], reassign_after_s=60)
    created = time.monotonic()
    first = customer_id()
    sc.send(first, "first")
    open_tx = sc.tx_of(first)["id"]
    sc.wait_state(open_tx, "offered", offered_to=a.id)
    # Stored for another customer, then forwarded naming the first one (as a merge between storing and
    # forwarding would leave it): the inbox's write checks the store and routes it as stored.
    other = customer_id()
    first_customer_id = sc.tx(open_tx)["customer"]["id"]
    # The gateway's first sweep that sees a new inbox has it read any message then unattached (a gateway that died may
    # have left one unforwarded): past it, and with nothing between storing and forwarding, the forward is what brings
    # the message.
    time.sleep(max(0.0, created + 2 * SWEEP_INTERVAL_S - time.monotonic()))

    async def store_then_forward() -> list[dict[str, Any]]:
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            first_customer = (await db.read(functools.partial(repo.customers_of, customer_ids=[first_customer_id])))
            inbox_actor = ray.get_actor(f"inbox:{sc.org.id}:{inbox}", namespace=sc.gateway.namespace)
            async with db.session() as session:
                result = await store_delivery(session, sc.org.id, parse_webhook(text_from(sc.org, 0, other, "moved")))
            (stored,) = result.new_messages[sc.org.id]
            forward = {**dataclasses.asdict(stored), "customer_id": next(iter(first_customer)),
                       "customer": next(iter(first_customer.values()))}
            answers = [await inbox_actor.ingest.remote([forward]) for _ in range(2)]  # and a redelivered forward
            return answers
        finally:
            await db.dispose()

    answers = asyncio.run(store_then_forward())
    # Its conversation is opened (and the message attached) by the routing pass's commit; the redelivery takes nothing.
    assert answers == [{"attached": 0, "opening": 1}, {"attached": 0, "opening": 0}]
    moved = sc.tx_of(other)
    assert moved["id"] != open_tx
    assert [m["summary"] for m in sc.tx(moved["id"])["messages"]] == ["moved"]
    assert [m["summary"] for m in sc.tx(open_tx)["messages"]] == ["first"]


# ------------------------------------------------------------------ 9. one owner per inbox


def test_a_newer_owner_fences_the_old_one_which_reloads_and_keeps_routing(sc: Scenario) -> None:
    a, b, inbox, tx_id = offered_to_the_first_of_two(sc)
    (epoch,) = query_db(sc.gateway, "SELECT owner_epoch FROM inboxes WHERE id = :i", i=inbox)[0]
    # Another deployment activated the inbox and wrote an offer to b that the live actors know nothing of.
    write_db(sc, "UPDATE inboxes SET owner_epoch = owner_epoch + 1 WHERE id = :i", i=inbox)
    write_db(sc, "UPDATE transactions SET offered_to = :b, offer_id = :oid, offer_seq = offer_seq + 1 "
                 "WHERE id = :tx", b=b.id, oid=f"{tx_id}.elsewhere", tx=tx_id)
    # The live owner finds it was fenced, reloads the store (the single truth) and has the agents reconcile.
    view = eventually(lambda: (v := sc.agent_view(b))["pending_offer"] and v, timeout=30,
                      what="b holding the offer written by the other owner")
    assert view["pending_offer"]["transaction_id"] == tx_id
    assert eventually(lambda: sc.agent_view(a)["pending_offer"] is None, timeout=30, what="a's stale hold dropped")
    assert sc.do(tx_id, "accept", b)["agent_id"] == b.id
    (now_epoch,) = query_db(sc.gateway, "SELECT owner_epoch FROM inboxes WHERE id = :i", i=inbox)[0]
    assert now_epoch > epoch + 1  # it took the inbox back under a newer epoch


def test_a_second_deployment_on_a_live_store_fails_fast_before_touching_any_inbox(
        sc: Scenario, tmp_path: Path) -> None:
    (a,) = sc.agents(1)
    inbox = sc.inbox([a])
    customer = customer_id()
    sc.send(customer)
    sc.wait_state(sc.tx_of(customer)["id"], "offered", offered_to=a.id)  # the live deployment acts on it
    before = query_db(sc.gateway, "SELECT owner_epoch, config_version FROM inboxes WHERE id = :i", i=inbox)
    env = {**os.environ, "WA_ROUTER_DATABASE_URL": sc.gateway.database_url,
           "WA_ROUTER_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "WA_ROUTER_PORT": "0",
           "WA_ROUTER_RAY_DASHBOARD_PORT": "0"}
    env.pop("WA_ROUTER_RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use by a live deployment" in lines[0], done.stderr
    assert query_db(sc.gateway, "SELECT owner_epoch, config_version FROM inboxes WHERE id = :i", i=inbox) == before
