"""InboxActor: owns one inbox's transactions — their queue, offers, timers, sticky memory and rotation.

A plain class: `actors.directory.RayDirectory` deploys it as the named Ray actor `inbox:<org>:<inbox>`.
Every state change happens under one lock and is written to the store before the caller is answered,
so an activation (first call, or after a restart) rebuilds the same state and re-arms the offer timers.
The agent actors are the authority on an agent's capacity: an offer exists only once the agent actor
has reserved it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

import ray
from sqlalchemy import update

from actors.activation import StoreBackedActor
from actors.directory import ActorUnavailable, Directory
from actors.transaction_state import TxState
from config.settings import Settings
from routing import AgentSnapshot, AssignmentMode, Offer, RoutingRequest, decide
from store import routing_repo as repo
from store.tables import Transaction
from store.types import utcnow

log = logging.getLogger(__name__)

Result = dict[str, Any]

# The snapshot fields routing decides on; a pushed snapshot that changes none of them is no event.
ROUTING_FIELDS = ("status", "max_concurrent", "active_count", "has_pending_offer", "idle_since")


def ok(tx_id: int) -> Result:
    return {"status": 200, "transaction_id": tx_id}


def refuse(status: int, detail: str) -> Result:
    return {"status": status, "detail": detail}


class InboxActor(StoreBackedActor):
    def __init__(self, org_id: int, inbox_id: int, settings: Settings, directory: Directory | None = None) -> None:
        super().__init__(org_id, settings, directory)
        self.inbox_id = inbox_id
        # One lock for every transition: routing, answers to offers, timers and ingest interleave
        # at each await otherwise.
        self._lock = asyncio.Lock()
        self._config: repo.InboxConfig | None = None
        self._agents: dict[int, dict[str, Any]] = {}
        self._txs: dict[int, TxState] = {}
        self._by_customer: dict[int, int] = {}
        self._timers: dict[int, asyncio.Task[None]] = {}
        self._routing_requested: asyncio.Task[None] | None = None
        self._routing_wanted = False

    # ------------------------------------------------------------------ activation

    @property
    def config(self) -> repo.InboxConfig:
        assert self._config is not None
        return self._config

    def _exists(self) -> bool:
        return self._config is not None

    async def _load(self) -> None:
        async with self.db.session() as session:
            self._config = await repo.load_inbox_config(session, self.inbox_id)
            if self._config is None:
                return
            self._agents = await repo.load_agent_snapshots(session, self._config.members)
            rows = await repo.load_open_transactions(session, self.inbox_id)
            ids = [row.id for row in rows]
            offerees = await repo.past_offerees(session, ids)
            firsts = await repo.first_messages(session, ids)
            customers = await repo.customers_of(session, [row.customer_id for row in rows])
            for row in rows:
                tx = TxState.of(row)
                tx.past_offerees = offerees.get(tx.id, set())
                tx.first_message = firsts.get(tx.id)
                tx.customer = customers.get(tx.customer_id, {})
                tx.sticky_agent = await repo.sticky_agent_of(session, self.inbox_id, tx.customer_id)
                tx.current_offer_is_sticky = tx.state == "offered" and tx.offered_to == tx.sticky_agent
                self._remember(tx)

    async def _on_activated(self) -> None:
        # Durable reminders become local timers again; an overdue one fires at once.
        for tx in self._txs.values():
            if tx.state == "offered":
                self._arm_timer(tx)
        async with self._lock:
            async with self.db.session() as session:
                pending = await repo.unrouted_messages(session, self.inbox_id)
            if pending:
                await self._ingest_locked(pending)
            await self._route_waiting(new_round=True)

    def _remember(self, tx: TxState) -> None:
        self._txs[tx.id] = tx
        self._by_customer[tx.customer_id] = tx.id

    def _forget(self, tx: TxState) -> None:
        self._txs.pop(tx.id, None)
        if self._by_customer.get(tx.customer_id) == tx.id:
            del self._by_customer[tx.customer_id]
        self._cancel_timer(tx.id)

    # ------------------------------------------------------------------ health and views

    @ray.method(concurrency_group="health")
    async def ping(self) -> dict[str, Any]:
        """Liveness, served from its own concurrency group so a busy inbox still answers."""
        return {"inbox_id": self.inbox_id, "activated": self._activated, "open": len(self._txs)}

    async def activate(self) -> dict[str, Any]:
        exists = await self._ensure_active()
        return {"inbox_id": self.inbox_id, "exists": exists, "open": len(self._txs),
                "queued": sum(1 for tx in self._txs.values() if tx.state == "queued")}

    # ------------------------------------------------------------------ ingest

    async def ingest(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach stored messages to their customer's transaction (opening one if needed) and route.

        Idempotent: a message already attached (a redelivery, a recovery pass) is skipped.
        """
        if not await self._ensure_active():
            return {"attached": 0}
        async with self._lock:
            async with self.db.session() as session:
                fresh = await repo.unrouted_messages(session, self.inbox_id, ids=[m["id"] for m in messages])
            attached = await self._ingest_locked(fresh)
            await self._route_waiting()
        return {"attached": attached}

    async def _ingest_locked(self, messages: list[dict[str, Any]]) -> int:
        now = utcnow()
        for message in messages:
            # The customer's open conversation, else one of a customer merged into it (store/customers.py).
            tx = next((self._txs[self._by_customer[c]] for c in message["customer_ids"] if c in self._by_customer),
                      None)
            async with self.db.session() as session:
                if tx is None:
                    tx = await self._open_transaction(session, message, now)
                await repo.attach_messages(session, tx.id, [message["id"]])
            tx.customer = message["customer"]
            if tx.state == "assigned" and tx.agent_id is not None:
                await self._tell_agent(tx.agent_id, "deliver_message", tx.id, self.inbox_id, message)
        return len(messages)

    async def _open_transaction(self, session: Any, message: dict[str, Any], now: datetime) -> TxState:
        row = Transaction(org_id=self.org_id, inbox_id=self.inbox_id, customer_id=message["customer_id"],
                          customer_wa_id=message["customer"].get("wa_id"),
                          customer_name=message["customer"].get("name"), state="queued", waiting_since=now,
                          created_at=now, updated_at=now, tried=[])
        session.add(row)
        await session.flush()
        tx = TxState.of(row)
        tx.first_message = message
        tx.customer = message["customer"]
        tx.sticky_agent = await repo.sticky_agent_of(session, self.inbox_id, tx.customer_id)
        await repo.add_transaction_event(session, tx.id, "queued", None, now, customer=tx.customer_id)
        self._remember(tx)
        return tx

    # ------------------------------------------------------------------ routing

    def _snapshots(self) -> tuple[AgentSnapshot, ...]:
        snapshots = []
        for user_id, (proficiency, licensed) in self.config.members.items():
            state = self._agents.get(user_id) or repo.agent_snapshot(None, user_id, 0, False)
            idle = state.get("idle_since")
            snapshots.append(AgentSnapshot(
                user_id=user_id, order_key=user_id, status=state["status"], active_count=state["active_count"],
                max_concurrent=state["max_concurrent"], has_pending_offer=state["has_pending_offer"],
                proficiency=proficiency, idle_since=datetime.fromisoformat(idle) if idle else None,
                licensed=licensed,
            ))
        return tuple(snapshots)

    async def _route_waiting(self, *, new_round: bool = False) -> None:
        """Offer every waiting transaction, oldest first, to the agent its mode picks (lock held).

        A transaction every eligible agent passed on waits for an eligibility event (an agent's
        presence or capacity changed, a chat ended, the inbox was edited): only a pass for such an
        event (`new_round`) starts a new round over the agents for it, not any later pass (a new
        customer's message, another transaction's decline).
        """
        if self._config is None or self.config.mode == AssignmentMode.MANUAL:
            return
        waiting = sorted((tx for tx in self._txs.values() if tx.state == "queued"),
                         key=lambda tx: (tx.waiting_since, tx.id))
        for tx in waiting:
            if tx.round_over:
                if not new_round:
                    continue
                tx.round_over = False
            await self._route_one(tx)

    async def _route_one(self, tx: TxState) -> None:
        # Each refused reservation refreshes that agent's snapshot, so the loop always ends.
        for _attempt in range(len(self.config.members) + 1):
            if tx.state != "queued":
                return
            decision = decide(RoutingRequest(
                mode=AssignmentMode(self.config.mode), agents=self._snapshots(),
                rotation_pointer=self.config.rotation_pointer, tried=frozenset(tx.tried),
                sticky_agent=tx.sticky_agent if self.config.mode == AssignmentMode.STICKY else None,
                sticky_dials_made=tx.sticky_dials, dials_per_agent=self.config.dials_per_agent,
                sticky_declined=tx.sticky_declined,
            ))
            if not isinstance(decision, Offer):
                if decision.reset_tried and tx.tried:
                    # Everyone had a chance: wait for the next eligibility event, then start a new round.
                    tx.tried = []
                    tx.round_over = True
                    await self._save(tx, "requeued", None, reason=decision.reason)
                return
            if await self._offer(tx, decision):
                return

    async def _offer(self, tx: TxState, decision: Offer) -> bool:
        now = utcnow()
        expires_at = now + timedelta(seconds=self.config.reassign_after_s)
        offer = {**tx.summary(self.inbox_id, self.config.name), "expires_at": expires_at.isoformat(),
                 "offer_seq": tx.offer_seq + 1}
        try:
            answer = await self.directory.agent(self.org_id, decision.user_id).reserve_offer(offer)
        except ActorUnavailable:
            log.warning("agent %s unreachable while offering transaction %s", decision.user_id, tx.id)
            self._agents[decision.user_id] = {**self._agents.get(decision.user_id, {}), "status": "offline",
                                              "active_count": 0, "max_concurrent": 1, "has_pending_offer": False,
                                              "idle_since": None}
            return False
        self._update_agent(answer["snapshot"])
        if not answer["ok"]:
            return False
        tx.state = "offered"
        tx.offered_to = decision.user_id
        tx.offer_expires_at = expires_at
        tx.offer_seq += 1
        tx.current_offer_is_sticky = decision.sticky_dial
        tx.past_offerees.add(decision.user_id)
        if decision.new_rotation_pointer is not None and decision.new_rotation_pointer != self.config.rotation_pointer:
            self.config.rotation_pointer = decision.new_rotation_pointer
            async with self.db.session() as session:
                await repo.save_rotation_pointer(session, self.inbox_id, decision.new_rotation_pointer)
        await self._save(tx, "offered", decision.user_id, reason=decision.reason, expires_at=expires_at.isoformat(),
                         sticky_dial=decision.sticky_dial)
        self._arm_timer(tx)
        return True

    def request_routing(self) -> None:
        """Coalesce eligibility events into routing passes (never run under a caller's await).

        An event that arrives while a pass runs asks for one more pass: the running one may have
        decided on the transactions before it with the agent's older snapshot.
        """
        self._routing_wanted = True
        if self._routing_requested is not None and not self._routing_requested.done():
            return

        async def run() -> None:
            while self._routing_wanted:
                self._routing_wanted = False
                try:
                    async with self._lock:
                        await self._route_waiting(new_round=True)
                except Exception:
                    log.exception("routing pass failed for inbox %s", self.inbox_id)

        self._routing_requested = asyncio.ensure_future(run())

    # ------------------------------------------------------------------ offer timers

    def _arm_timer(self, tx: TxState) -> None:
        self._cancel_timer(tx.id)
        assert tx.offer_expires_at is not None
        delay = max(0.0, (tx.offer_expires_at - utcnow()).total_seconds())
        self._timers[tx.id] = asyncio.ensure_future(self._expire_after(tx.id, tx.offer_seq, delay))

    def _cancel_timer(self, tx_id: int) -> None:
        timer = self._timers.pop(tx_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _expire_after(self, tx_id: int, offer_seq: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            async with self._lock:
                tx = self._txs.get(tx_id)
                # A stale timer (the offer was answered or replaced) does nothing.
                if tx is not None and tx.state == "offered" and tx.offer_seq == offer_seq:
                    self._timers.pop(tx_id, None)
                    await self._end_offer(tx, "missed")
                    await self._route_waiting()
        except Exception:
            log.exception("offer timer failed for transaction %s", tx_id)

    async def _end_offer(self, tx: TxState, kind: str, *, count_as_tried: bool = True, **detail: Any) -> None:
        """The pending offer is over (missed, declined or rescinded): release the agent, requeue."""
        user_id = tx.offered_to
        assert user_id is not None
        self._cancel_timer(tx.id)
        await self._tell_agent_and_refresh(user_id, "release_offer", tx.id, kind)
        if count_as_tried:
            if tx.current_offer_is_sticky and kind == "declined":
                tx.sticky_declined = True
                tx.tried.append(user_id)
            elif tx.current_offer_is_sticky:
                tx.sticky_dials += 1
                if tx.sticky_dials >= self.config.dials_per_agent:
                    tx.tried.append(user_id)
            elif user_id not in tx.tried:
                tx.tried.append(user_id)
        tx.state = "queued"
        tx.offered_to = None
        tx.offer_expires_at = None
        tx.current_offer_is_sticky = False
        await self._save(tx, kind, user_id, **detail)

    # ------------------------------------------------------------------ answers from agents

    def _offer_check(self, tx: TxState | None, user_id: int) -> Result | None:
        if tx is None:
            return refuse(409, "the transaction is closed")
        if tx.state == "offered" and tx.offered_to == user_id:
            return None
        if user_id in tx.past_offerees:
            return refuse(409, "the offer expired or was withdrawn")
        return refuse(403, "this transaction is not offered to you")

    async def accept(self, tx_id: int, user_id: int) -> Result:
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            tx = self._txs.get(tx_id)
            refusal = self._offer_check(tx, user_id)
            if refusal is not None:
                return refusal
            assert tx is not None and tx.offer_expires_at is not None
            if utcnow() >= tx.offer_expires_at:  # the timer is due but has not run yet
                await self._end_offer(tx, "missed")
                await self._route_waiting()
                return refuse(409, "the offer expired")
            try:
                confirmed = await self.directory.agent(self.org_id, user_id).confirm_offer(tx.id)
            except ActorUnavailable:
                confirmed = {"ok": False, "snapshot": None}
            if confirmed["snapshot"] is not None:
                self._update_agent(confirmed["snapshot"])
            if not confirmed["ok"]:
                # The agent withdrew (presence change) between offer and answer.
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent withdrew")
                await self._route_waiting()
                return refuse(409, "the offer was withdrawn")
            await self._assign(tx, user_id, "accepted")
            # No longer holding an offer, the agent may take more work if under capacity.
            await self._route_waiting()
            return ok(tx.id)

    async def decline(self, tx_id: int, user_id: int) -> Result:
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            tx = self._txs.get(tx_id)
            refusal = self._offer_check(tx, user_id)
            if refusal is not None:
                return refusal
            assert tx is not None
            await self._end_offer(tx, "declined")
            await self._route_waiting()
            return ok(tx.id)

    async def _assign(self, tx: TxState, user_id: int, kind: str, **detail: Any) -> None:
        now = utcnow()
        self._cancel_timer(tx.id)
        tx.state = "assigned"
        tx.agent_id = user_id
        tx.assigned_at = now
        tx.offered_to = None
        tx.offer_expires_at = None
        tx.current_offer_is_sticky = False
        async with self.db.session() as session:
            # Whoever handles the customer becomes their sticky agent on this inbox.
            await repo.remember_sticky_agent(session, self.inbox_id, tx.customer_id, user_id)
        tx.sticky_agent = user_id
        await self._save(tx, kind, user_id, **detail)

    async def claim(self, tx_id: int, user_id: int) -> Result:
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            tx = self._txs.get(tx_id)
            if tx is None or tx.state == "assigned":
                return refuse(409, "the transaction was already claimed")
            if tx.state != "queued":
                return refuse(409, "the transaction is offered to another agent")
            membership = self.config.members.get(user_id)
            if membership is None or not membership[1]:
                return refuse(403, "only a licensed agent of this inbox may claim its transactions")
            answer = await self._take_directly(tx, user_id, "claimed")
            if answer is not None:
                return answer
            await self._assign(tx, user_id, "claimed")
            return ok(tx.id)

    async def _take_directly(self, tx: TxState, user_id: int, kind: str) -> Result | None:
        """Ask the agent actor to take the transaction outside an offer; a refusal becomes a 409."""
        payload = {**tx.summary(self.inbox_id, self.config.name), "kind": kind}
        try:
            answer = await self.directory.agent(self.org_id, user_id).assign_direct(payload)
        except ActorUnavailable:
            return refuse(409, "the agent is unavailable right now")
        self._update_agent(answer["snapshot"])
        if not answer["ok"]:
            return refuse(409, answer["reason"])
        return None

    async def close(self, tx_id: int, user_id: int, by_supervisor: bool) -> Result:
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            tx = self._txs.get(tx_id)
            if tx is None:
                return refuse(409, "the transaction is already closed")
            if not by_supervisor and not (tx.state == "assigned" and tx.agent_id == user_id):
                return refuse(403, "only the agent handling this transaction may close it")
            if tx.state == "offered":
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="closed by supervisor")
            if tx.state == "assigned" and tx.agent_id is not None:
                await self._tell_agent_and_refresh(tx.agent_id, "transaction_ended", tx.id, "closed")
            tx.state = "closed"
            tx.closed_at = utcnow()
            await self._save(tx, "closed", user_id)
            self._forget(tx)
            await self._route_waiting(new_round=True)
            return ok(tx.id)

    async def transfer(self, tx_id: int, by_user_id: int | None, to_user_id: int | None) -> Result:
        """A supervisor moves a transaction to another agent of the inbox, or back to the queue (None)."""
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            tx = self._txs.get(tx_id)
            if tx is None:
                return refuse(409, "the transaction is closed")
            previous = tx.agent_id if tx.state == "assigned" else None
            if to_user_id is not None:
                membership = self.config.members.get(to_user_id)
                if membership is None or not membership[1]:
                    return refuse(422, f"user {to_user_id} is not a licensed agent of this inbox")
                if previous == to_user_id:
                    return refuse(409, "the transaction is already with that agent")
                answer = await self._take_directly(tx, to_user_id, "transferred")
                if answer is not None:
                    return answer
            if tx.state == "offered":
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="transferred")
            if previous is not None:
                await self._tell_agent_and_refresh(previous, "transaction_ended", tx.id, "transferred")
            if to_user_id is not None:
                await self._assign(tx, to_user_id, "transferred", from_agent=previous, by=by_user_id)
            else:
                tx.state = "queued"
                tx.agent_id = None
                tx.assigned_at = None
                tx.tried = [previous] if previous is not None else []
                await self._save(tx, "transferred", None, from_agent=previous, to_queue=True, by=by_user_id)
            # The previous agent has room again; the queue may move.
            await self._route_waiting(new_round=True)
            return ok(tx.id)

    # ------------------------------------------------------------------ events from agents and config

    async def agent_changed(self, snapshot: dict[str, Any]) -> None:
        """An agent of this inbox changed presence or capacity: refresh it and route what waits.

        A push that only repeats what an answer of the agent already told us is no new event
        (otherwise a transaction every agent passed on would be offered again at once). Compared
        under the lock: the push may overtake the answer of the call that caused it.
        """
        if not await self._ensure_active():
            return
        async with self._lock:
            changed = self._config is not None and snapshot["user_id"] in self.config.members \
                and self._update_agent(snapshot)
        if changed:
            self.request_routing()

    def _update_agent(self, snapshot: dict[str, Any]) -> bool:
        """Keep the newest snapshot of an agent; True when it changes what routing decides on."""
        current = self._agents.get(snapshot["user_id"])
        if current is not None and snapshot.get("version", 0) < current.get("version", 0):
            return False
        self._agents[snapshot["user_id"]] = snapshot
        return current is None or any(current.get(key) != snapshot.get(key) for key in ROUTING_FIELDS)

    async def _tell_agent_and_refresh(self, user_id: int, method: str, *args: Any) -> None:
        """Call an agent method that answers with its new snapshot (an offer released, a chat ended)
        and route the rest on that state now, not on the push that follows."""
        snapshot = await self._tell_agent(user_id, method, *args)
        if snapshot is not None:
            self._update_agent(snapshot)

    async def agent_withdrew(self, user_id: int, tx_id: int) -> None:
        """The agent went away or offline while holding our offer: rescind it and reroute at once."""
        if not await self._ensure_active():
            return
        async with self._lock:
            tx = self._txs.get(tx_id)
            if tx is not None and tx.state == "offered" and tx.offered_to == user_id:
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent unavailable")
                await self._route_waiting()

    async def config_changed(self) -> dict[str, Any]:
        """Mode, agents, proficiency or timers were edited: apply live, keeping queued and offered work."""
        if not self._activated:
            return await self.activate()
        async with self._lock:
            async with self.db.session() as session:
                config = await repo.load_inbox_config(session, self.inbox_id)
                if config is None:
                    self._config = None
                    return {"inbox_id": self.inbox_id, "exists": False}
                self._config = config
                self._agents = await repo.load_agent_snapshots(session, config.members)
            for tx in list(self._txs.values()):
                if tx.state == "offered" and tx.offered_to not in config.members:
                    await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent left the inbox")
            await self._route_waiting(new_round=True)
        return {"inbox_id": self.inbox_id, "exists": True, "open": len(self._txs)}

    # ------------------------------------------------------------------ persistence helpers

    async def _save(self, tx: TxState, event: str, agent_id: int | None, **detail: Any) -> None:
        now = utcnow()
        async with self.db.session() as session:
            await session.execute(update(Transaction).where(Transaction.id == tx.id).values(**tx.columns(now)))
            await repo.add_transaction_event(session, tx.id, event, agent_id, now, **detail)

    async def _tell_agent(self, user_id: int, method: str, *args: Any) -> Any:
        """Call an agent actor; its unavailability must not stall the inbox (its state is in the store)."""
        with contextlib.suppress(ActorUnavailable):
            return await getattr(self.directory.agent(self.org_id, user_id), method)(*args)
        log.warning("agent %s unreachable for %s", user_id, method)
        return None

    async def open_outbound(self, customer: dict[str, Any], user_id: int) -> Result:
        """WhatsApp Back: a conversation an agent starts, assigned to that agent from the start.

        `customer` is the customers row as a dict (`id`, `user_id`, `wa_id`, `username`, `name`).
        Reuses the customer's open conversation on this inbox when it is already that agent's
        (`reused: true`); refuses (409) when it is queued, offered or assigned to anyone else, or the
        agent cannot take one more (presence, capacity); 403 for a non-member. The customer's reply
        then attaches to it like any message and reaches the same agent.
        """
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            membership = self.config.members.get(user_id)
            if membership is None or not membership[1]:
                return refuse(403, "only a licensed agent of this inbox may start a conversation on it")
            current = self._txs.get(self._by_customer.get(customer["id"], -1))
            if current is not None:
                if current.state == "assigned" and current.agent_id == user_id:
                    return {**ok(current.id), "reused": True}
                owner = "another agent's" if current.state == "assigned" else f"{current.state} for routing"
                return refuse(409, f"the customer already has an open conversation on this inbox ({owner})")
            now = utcnow()
            async with self.db.session() as session:
                row = Transaction(org_id=self.org_id, inbox_id=self.inbox_id, customer_id=customer["id"],
                                  customer_wa_id=customer.get("wa_id"), customer_name=customer.get("name"),
                                  state="queued", waiting_since=now, created_at=now, updated_at=now, tried=[])
                session.add(row)
                await session.flush()
                tx = TxState.of(row)
                tx.customer = customer
                tx.sticky_agent = await repo.sticky_agent_of(session, self.inbox_id, tx.customer_id)
                await repo.add_transaction_event(session, tx.id, "opened_outbound", user_id, now,
                                                 customer=tx.customer_id)
            self._remember(tx)
            refusal = await self._take_directly(tx, user_id, "assigned")
            if refusal is not None:
                tx.state = "closed"
                tx.closed_at = utcnow()
                await self._save(tx, "closed", user_id, reason=refusal["detail"])
                self._forget(tx)
                return refusal
            await self._assign(tx, user_id, "assigned", outbound=True)
            return {**ok(tx.id), "reused": False}
