"""InboxActor: owns one inbox's transactions — their queue, offers, timers, sticky memory and rotation.

A plain class: `actors.directory.RayDirectory` deploys it as the named Ray actor `inbox:<org>:<inbox>`.

Every step is: decide (pure) → commit ONE store transaction → change memory → tell agents. The
store is the single truth: an activation (first call, a restart, or after being fenced) reloads it,
re-arms the offer timers and has the member agents reconcile. Each activation takes a new fencing
epoch, and every write is conditional on it, so a stale owner (another deployment, a zombie) can
never overwrite a newer one's work. A control loop checks the store every few seconds for a new
configuration version, a newer owner, and stored messages no forward delivered.

An offer is a reservation with an id (Twilio TaskRouter's model): the agent actor holds it, the
inbox commits it, the agent publishes it; accept/decline/timeout end it. Calls to agents have
deadlines, and their follow-ups go through per-agent mailboxes that retry until delivered, so a
lost reply never leaves the two sides disagreeing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from actors.activation import StoreBackedActor
from actors.agent_link import AgentLink
from actors.directory import Directory
from actors.lazy_store import lazy_module
from actors.offer_plan import PlannedOffer, RoutingSettings, new_offer_id, plan_offers
from actors.transaction_state import TxState
from config.actor_settings import ActorSettings
from routing import AssignmentMode
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from store import routing_repo as repo
else:
    # Loaded at the inbox's activation: an agent's process loads this class to call inboxes (`actors.lazy_store`).
    repo = lazy_module("store.routing_repo")

log = logging.getLogger(__name__)

T = TypeVar("T")

Result = dict[str, Any]

# Unrouted messages are read from the store in pages of this size.
INGEST_PAGE = 500


def ok(tx_id: int) -> Result:
    return {"status": 200, "transaction_id": tx_id}


def refuse(status: int, detail: str) -> Result:
    return {"status": status, "detail": detail}


RELOADING = refuse(503, "the inbox is reloading its state; retry shortly")


class InboxActor(StoreBackedActor):
    def __init__(self, org_id: int, inbox_id: int, settings: ActorSettings, directory: Directory | None = None) -> None:
        self.inbox_id = inbox_id
        # One lock for every step: routing, answers to offers, timers and ingest interleave at each await otherwise.
        self._lock = asyncio.Lock()
        self._link = AgentLink(org_id, inbox_id, settings, lambda: self.directory, self.request_routing)
        self._control: asyncio.Task[None] | None = None
        self._taking_back: asyncio.Task[None] | None = None
        self._timers: dict[int, asyncio.Task[None]] = {}
        # Inside an API step: the agents' answers its caller waits for (`_answer`).
        self._agents_to_answer: list[asyncio.Future[Any]] | None = None
        self._reset()
        super().__init__(org_id, settings, directory)

    def _reset(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers = {}
        self._config: repo.InboxConfig | None = None
        self._config_stale = False
        self._epoch = 0
        self._txs: dict[int, TxState] = {}
        self._by_customer: dict[int, int] = {}
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
            epoch = await repo.take_inbox_ownership(session, self.inbox_id)
            if epoch is None:
                return
            config = await repo.load_inbox_config(session, self.inbox_id)
            assert config is not None
            agents = await repo.load_agent_snapshots(session, config.members)
            rows = await repo.load_open_transactions(session, self.inbox_id)
            ids = [row.id for row in rows]
            offerees = await repo.past_offerees(session, ids)
            firsts = await repo.first_messages(session, ids)
            customers = await repo.customers_of(session, [row.customer_id for row in rows])
            txs = []
            for row in rows:
                sticky = await repo.sticky_agent_of(session, self.inbox_id, row.customer_id)
                txs.append(replace(TxState.of(row), sticky_agent=sticky,
                                   past_offerees=frozenset(offerees.get(row.id, set())),
                                   first_message=firsts.get(row.id), customer=customers.get(row.customer_id, {}),
                                   current_offer_is_sticky=row.state == "offered" and row.offered_to == sticky))
        # Committed: the new epoch is ours.
        self._epoch, self._config = epoch, config
        self._link.load(frozenset(config.members), agents)
        self._txs, self._by_customer = {}, {}
        for tx in txs:
            self._remember(tx)

    async def _on_activated(self) -> None:
        # Durable reminders become local timers again; an overdue one fires at once.
        for tx in self._txs.values():
            if tx.state == "offered":
                self._arm_timer(tx)
        # The agents reconcile their holds and work with what this inbox committed (offline agents
        # without work here are left asleep: activating them would cost a process each).
        involved = {tx.offered_to for tx in self._txs.values()} | {tx.agent_id for tx in self._txs.values()}
        for user_id in self.config.members:
            if user_id in involved or self._link.status_of(user_id) not in (None, "offline"):
                self._link.tell(user_id, "resync")
        async with self._lock:
            await self._ingest_stored()
        if self._control is None or self._control.done():
            self._control = asyncio.ensure_future(self._control_forever())
        # Routing starts once the activation counts: calls waiting on the activation (accepts, ingests)
        # are not held behind hold calls to agents that may be restarting too.
        self.request_routing()

    def _remember(self, tx: TxState) -> None:
        self._txs[tx.id] = tx
        self._by_customer[tx.customer_id] = tx.id

    def _forget(self, tx: TxState) -> None:
        self._txs.pop(tx.id, None)
        if self._by_customer.get(tx.customer_id) == tx.id:
            del self._by_customer[tx.customer_id]
        self._cancel_timer(tx.id)

    async def _write(self, statements: Callable[[Connection], T]) -> T:
        """A step's one store transaction, after its reads: refused (Fenced) once a newer activation owns the inbox.

        `statements` run on a worker thread (file-backed SQLite): they touch no memory of this actor.
        """
        inbox_id, epoch = self.inbox_id, self._epoch

        def fenced(connection: Connection) -> tuple[int, T]:
            return repo.fence(connection, inbox_id, epoch), statements(connection)

        version, result = await self.db.write(fenced)
        if version != self.config.config_version:
            self._config_stale = True
        return result

    def _fenced(self) -> Result:
        """A write was refused: another activation owns the inbox. Reload from the store under a newer epoch."""
        if self._taking_back is None or self._taking_back.done():
            log.warning("inbox %s: a newer activation owns it; reloading from the store", self.inbox_id)
            self._taking_back = asyncio.ensure_future(self._take_back())
        return refuse(409, "the inbox changed hands; retry")

    async def _take_back(self) -> None:
        # Under the step lock: no step is half-way through memory while it is dropped.
        async with self._lock:
            self._activated = False
            self._reset()
        await self._activate_until_done()

    # ------------------------------------------------------------------ control loop

    async def _control_forever(self) -> None:
        """Never dies: configuration versions, ownership and stored-but-unrouted messages, every few seconds."""
        while True:
            await asyncio.sleep(self._settings.inbox_sync_interval_s)
            try:
                await self._control_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox %s: control pass failed", self.inbox_id)

    async def _control_pass(self) -> None:
        if not self._activated or self._config is None:
            return
        async with self.db.session() as session:
            watch = await repo.inbox_watch(session, self.inbox_id)
        if watch is None:
            return  # deleted: the gateway stops this actor
        version, epoch, unrouted = watch
        if epoch != self._epoch:
            self._fenced()  # fenced by a newer activation: take the inbox back from the store
            return
        if version != self.config.config_version or unrouted or self._config_stale:
            async with self._lock:
                if not self._activated:
                    return
                try:
                    if version != self.config.config_version:
                        self._config_stale = True
                    if unrouted:
                        await self._ingest_stored()
                except repo.Fenced:
                    self._fenced()
                    return
            self.request_routing()

    # ------------------------------------------------------------------ health and views

    @ray.method(concurrency_group="health")
    async def ping(self) -> dict[str, Any]:
        """Liveness, served from its own concurrency group so a busy inbox still answers; the node it runs on."""
        return {"inbox_id": self.inbox_id, "activated": self._activated, "open": len(self._txs),
                "epoch": self._epoch, "node_id": ray.get_runtime_context().get_node_id()}

    async def activate(self) -> dict[str, Any]:
        exists = await self._ensure_active()
        return {"inbox_id": self.inbox_id, "exists": exists, "open": len(self._txs),
                "queued": sum(1 for tx in self._txs.values() if tx.state == "queued")}

    # ------------------------------------------------------------------ ingest

    async def ingest(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach stored messages to their customer's transaction (opening one if needed) and route.

        Idempotent: a message already attached (a redelivery, a recovery pass) is skipped. Whatever
        is not attached now (the inbox reloading, a failed commit) stays unattached in the store,
        where the control loop finds it.
        """
        if not await self._ensure_active():
            return {"attached": 0}
        async with self._lock:
            if not self._activated:
                return {"attached": 0}
            try:
                attached, opened = await self._ingest_forwarded(messages)
            except repo.Fenced:
                self._fenced()
                return {"attached": 0}
        if opened:
            # Routed in a pass of its own: ingests arriving meanwhile share it, and the forward returns at once.
            # Follow-ups of open conversations change nobody's eligibility: no pass for them.
            self.request_routing()
        return {"attached": attached}

    async def _ingest_forwarded(self, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(messages attached, conversations opened).

        Forwarded messages of customers with an open conversation here are attached without reading the
        store first (the gateway sent what it stored): one write. The rest, and any the write left alone
        (attached meanwhile, customer merged since), go through the step that reads the store."""
        known: dict[int, list[dict[str, Any]]] = {}  # transaction id -> its messages, in order
        for message in messages:
            payload = repo.forwarded_payload(message)
            if payload is not None and (tx_id := self._by_customer.get(payload["customer_id"])) is not None:
                known.setdefault(tx_id, []).append(payload)
        attached: set[int] = set()
        if known:
            inbox_id = self.inbox_id

            def statements(connection: Connection) -> set[int]:
                done: set[int] = set()
                for tx_id, payloads in known.items():  # one customer per conversation
                    done |= repo.attach_if_unattached(connection, tx_id, inbox_id, payloads[0]["customer_id"],
                                                      [m["id"] for m in payloads])
                return done

            attached = await self._write(statements)
            self._absorb_attached({tx_id: [m for m in payloads if m["id"] in attached]
                                   for tx_id, payloads in known.items()})
        rest = [m["id"] for m in messages if m["id"] not in attached]
        attached_rest, opened = await self._ingest_page(rest) if rest else (0, 0)
        return len(attached) + attached_rest, opened

    def _absorb_attached(self, by_tx: dict[int, list[dict[str, Any]]]) -> None:
        """After the commit: each conversation shows its customer's newest identity, and its agent gets the messages."""
        for tx_id, messages in by_tx.items():
            tx = self._txs.get(tx_id)
            if tx is None or not messages:
                continue
            tx = replace(tx, customer=messages[-1]["customer"])
            self._txs[tx_id] = tx
            if tx.state == "assigned" and tx.agent_id is not None:
                self._link.deliver(tx.agent_id, tx.id, messages)

    async def _ingest_stored(self) -> None:
        """Attach every unrouted message of the inbox, page after page (lock held)."""
        while (await self._ingest_page(None))[0] == INGEST_PAGE:
            pass

    async def _ingest_page(self, ids: list[int] | None) -> tuple[int, int]:
        """One step: open transactions for new customers and attach the messages, in one commit.

        (messages attached, conversations opened)."""
        now = utcnow()
        inbox_id, by_customer = self.inbox_id, dict(self._by_customer)  # the read step runs in another thread

        async def read(session: AsyncSession) -> tuple[list[dict[str, Any]], dict[int, int | None],
                                                        dict[int, dict[str, Any]], dict[int, int | None]]:
            fresh = await repo.unrouted_messages(session, inbox_id, ids=ids,
                                                 limit=None if ids is not None else INGEST_PAGE)
            # The customer's open conversation, else one of a customer merged into it (store/customers.py).
            open_tx = {m["id"]: next((by_customer[c] for c in m["customer_ids"] if c in by_customer), None)
                       for m in fresh}
            first_of: dict[int, dict[str, Any]] = {}
            for message in fresh:
                if open_tx[message["id"]] is None:
                    first_of.setdefault(message["customer_id"], message)
            sticky = {key: await repo.sticky_agent_of(session, inbox_id, key) for key in first_of}
            return fresh, open_tx, first_of, sticky

        fresh, open_tx, first_of, sticky = await self.db.read(read)
        if not fresh:
            return 0, 0
        new_rows = {key: {"org_id": self.org_id, "inbox_id": self.inbox_id, "customer_id": key,
                          "customer_wa_id": first["customer"].get("wa_id"),
                          "customer_name": first["customer"].get("name"), "state": "queued", "waiting_since": now,
                          "created_at": now, "updated_at": now, "tried": []}
                    for key, first in first_of.items()}

        def statements(connection: Connection) -> tuple[dict[int, int], dict[int, list[dict[str, Any]]]]:
            opened = {key: repo.insert_transaction(connection, row) for key, row in new_rows.items()}
            for key, tx_id in opened.items():
                repo.add_transaction_event(connection, tx_id, "queued", None, now, customer=key)
            by_tx: dict[int, list[dict[str, Any]]] = {}
            for message in fresh:
                existing = open_tx[message["id"]]
                by_tx.setdefault(opened[message["customer_id"]] if existing is None else existing, []).append(message)
            for tx_id, messages in by_tx.items():
                repo.attach_messages(connection, tx_id, [m["id"] for m in messages])
            return opened, by_tx

        opened, by_tx = await self._write(statements)
        for key, tx_id in opened.items():
            self._remember(TxState(id=tx_id, customer_id=key, state="queued", waiting_since=now,
                                   sticky_agent=sticky[key], first_message=first_of[key],
                                   customer=first_of[key]["customer"]))
        self._absorb_attached(by_tx)
        return len(fresh), len(opened)

    # ------------------------------------------------------------------ routing

    def _routing_settings(self) -> RoutingSettings:
        config = self.config
        return RoutingSettings(inbox_id=self.inbox_id, inbox_name=config.name, mode=AssignmentMode(config.mode),
                               reassign_after_s=config.reassign_after_s, dials_per_agent=config.dials_per_agent,
                               rotation_pointer=config.rotation_pointer)

    async def _routing_pass(self) -> bool:
        """Offer the waiting conversations: plan under the lock, have the agents hold the offers together with
        the lock released (ingests and answers go on meanwhile), then commit every held offer in one store
        transaction. True when another pass is wanted (a refusal changed what the inbox knows of an agent).
        """
        await self._link.settle()
        async with self._lock:
            if not self._activated:
                return False
            if self._config_stale:
                await self._reload_config()
            if self._config is None:
                return False
            planned = plan_offers(self._routing_settings(), self._link.routing_view(self.config.members),
                                  self._txs.values(), utcnow())
            if not planned:
                return False
            epoch, version = self._epoch, self.config.config_version
        # Holds reserve the agents' capacity; an agent arbitrates between inboxes offering at once.
        answers = await asyncio.gather(*(self._link.call(p.user_id, "hold", p.offer) for p in planned))
        async with self._lock:
            again, held = False, []
            for plan, answer in zip(planned, answers, strict=True):
                if answer is None:
                    # The hold may have been taken with its reply lost: release it (a no-op otherwise). The
                    # agent is skipped for a while: the next pass offers to another one at once.
                    self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
                    again = True
                    continue
                again |= self._link.update(answer["snapshot"])
                if not answer["ok"]:
                    continue
                if (not self._activated or self._epoch != epoch or self._config is None
                        or self.config.config_version != version or self._txs.get(plan.waiting.id) != plan.waiting):
                    # The conversation moved on while the agents were asked (closed, transferred, reloaded).
                    self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
                    again = True
                    continue
                held.append(plan)
            if held:
                await self._commit_offers(held)
        return again

    async def _commit_offers(self, held: list[PlannedOffer]) -> None:
        """One step for the whole pass: every held offer, its audit event and the rotation pointer (lock held)."""
        now = utcnow()
        pointer = held[-1].rotation_pointer
        new_pointer = pointer is not None and pointer != self.config.rotation_pointer
        inbox_id = self.inbox_id

        def statements(connection: Connection) -> None:
            for plan in held:
                repo.save_transaction(connection, plan.offered.id, plan.offered.columns(now))
                repo.add_transaction_event(connection, plan.offered.id, "offered", plan.user_id, now, **plan.detail)
            if new_pointer:
                repo.save_rotation_pointer(connection, inbox_id, pointer)

        try:
            await self._write(statements)
        except BaseException:
            for plan in held:
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
            raise
        if pointer is not None:
            self.config.rotation_pointer = pointer
        for plan in held:
            self._remember(plan.offered)
            self._arm_timer(plan.offered)
            self._link.tell(plan.user_id, "publish", plan.offer)

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
                    if await self._routing_pass():
                        self._routing_wanted = True
                except repo.Fenced:
                    self._fenced()
                except Exception:
                    log.exception("routing pass failed for inbox %s", self.inbox_id)

        self._routing_requested = asyncio.ensure_future(run())

    # ------------------------------------------------------------------ offer timers

    def _arm_timer(self, tx: TxState) -> None:
        self._cancel_timer(tx.id)
        assert tx.offer_expires_at is not None and tx.offer_id is not None
        delay = max(0.0, (tx.offer_expires_at - utcnow()).total_seconds())
        self._timers[tx.id] = asyncio.ensure_future(self._expire_after(tx.id, tx.offer_id, delay))

    def _cancel_timer(self, tx_id: int) -> None:
        timer = self._timers.pop(tx_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _expire_after(self, tx_id: int, offer_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            try:
                async with self._lock:
                    tx = self._txs.get(tx_id)
                    # A stale timer (the offer was answered or replaced) does nothing.
                    if tx is not None and tx.state == "offered" and tx.offer_id == offer_id:
                        await self._end_offer(tx, "missed")
                        self.request_routing()
                return
            except repo.Fenced:
                self._fenced()
                return
            except Exception:
                # The store may be briefly unreachable: the offer must still end, so try again.
                log.exception("offer timer failed for transaction %s; retrying", tx_id)
                await asyncio.sleep(1.0)

    async def _end_offer(self, tx: TxState, kind: str, *, count_as_tried: bool = True, **detail: Any) -> None:
        """One step: the pending offer is over (missed, declined or rescinded); release the agent, requeue."""
        user_id, offer_id = tx.offered_to, tx.offer_id
        assert user_id is not None and offer_id is not None
        requeued = tx.requeued(kind, self.config.dials_per_agent, count_as_tried=count_as_tried)
        await self._save(requeued, kind, user_id, offer_id=offer_id, **detail)
        self._cancel_timer(tx.id)
        self._remember(requeued)
        # The agent's answer (free again, or set away) reaches routing as its new snapshot, which asks for a
        # pass; an API caller waits for it once the lock is released.
        self._after_step(self._link.tell(user_id, "release", offer_id, kind))

    # ------------------------------------------------------------------ answers from agents

    def _offer_check(self, tx: TxState | None, user_id: int) -> Result | None:
        if tx is None:
            return refuse(409, "the transaction is closed")
        if tx.state == "offered" and tx.offered_to == user_id:
            return None
        if user_id in tx.past_offerees:
            return refuse(409, "the offer expired or was withdrawn")
        return refuse(403, "this transaction is not offered to you")

    async def _answer(self, step: Callable[[], Awaitable[Result]]) -> Result:
        """Run an API action as one locked step; a reloading or fenced inbox answers so the caller may retry.

        The caller is answered once the agents show the step's outcome (or their deadline passed), waited
        for with the lock released: a slow agent holds up its own caller, never the inbox.
        """
        if not await self._ensure_active():
            return refuse(404, "inbox not found")
        async with self._lock:
            if not self._activated:
                return RELOADING
            self._agents_to_answer = []
            try:
                result = await step()
            except repo.Fenced:
                return self._fenced()
            finally:
                waits, self._agents_to_answer = self._agents_to_answer, None
        await self._link.wait_for_answers(waits or [])
        return result

    def _after_step(self, answer: asyncio.Future[Any]) -> None:
        """An agent's answer the API caller of this step waits for (nobody waits in a timer's or a pass's step)."""
        if self._agents_to_answer is not None:
            self._agents_to_answer.append(answer)

    async def accept(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._accept(tx_id, user_id))

    async def decline(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._decline(tx_id, user_id))

    async def claim(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._claim(tx_id, user_id))

    async def close(self, tx_id: int, user_id: int, by_supervisor: bool) -> Result:
        return await self._answer(lambda: self._close(tx_id, user_id, by_supervisor))

    async def transfer(self, tx_id: int, by_user_id: int | None, to_user_id: int | None) -> Result:
        """A supervisor moves a transaction to another agent of the inbox, or back to the queue (None)."""
        return await self._answer(lambda: self._transfer(tx_id, by_user_id, to_user_id))

    async def _accept(self, tx_id: int, user_id: int) -> Result:
        tx = self._txs.get(tx_id)
        if tx is not None and tx.state == "assigned" and tx.agent_id == user_id:
            return ok(tx.id)  # a repeated accept (a retry after a lost answer) answers as the first did
        refusal = self._offer_check(tx, user_id)
        if refusal is not None:
            return refusal
        assert tx is not None and tx.offer_expires_at is not None and tx.offer_id is not None
        if utcnow() >= tx.offer_expires_at:  # the timer is due but has not run yet
            await self._end_offer(tx, "missed")
            self.request_routing()
            return refuse(409, "the offer expired")
        assigned, unseen = await self._assign(tx, user_id, "accepted", offer_id=tx.offer_id)
        await self._confirm(user_id, tx.offer_id, assigned, "accepted", unseen)
        # No longer holding an offer, the agent may take more work if under capacity. The pass runs
        # after this answer (as after every API step): an accept never waits for the queue's routing.
        self.request_routing()
        return ok(tx.id)

    async def _decline(self, tx_id: int, user_id: int) -> Result:
        tx = self._txs.get(tx_id)
        refusal = self._offer_check(tx, user_id)
        if refusal is not None:
            return refusal
        assert tx is not None
        await self._end_offer(tx, "declined")
        self.request_routing()
        return ok(tx.id)

    async def _assign(self, tx: TxState, user_id: int, kind: str, **detail: Any) -> tuple[TxState, list[Any]]:
        """One step: the transaction is the agent's; they become the customer's sticky agent here.

        Also answers the messages the agent has not been sent yet (those that came while it was
        queued or offered), to deliver once the agent has confirmed.
        """
        now = utcnow()
        assigned = tx.assigned(user_id, now)
        async with self.db.session() as session:
            sticky_customer = await repo.sticky_customer(session, tx.customer_id)
            shown = (tx.first_message or {}).get("id")
            unseen = [m for m in await repo.latest_messages(session, tx.id) if m["id"] != shown]

        def statements(connection: Connection) -> None:
            repo.save_transaction(connection, tx.id, assigned.columns(now))
            repo.remember_sticky_agent(connection, self.inbox_id, sticky_customer, user_id)
            repo.add_transaction_event(connection, tx.id, kind, user_id, now, **detail)

        await self._write(statements)
        self._cancel_timer(tx.id)
        self._remember(assigned)
        return assigned, unseen

    async def _confirm(self, user_id: int, offer_id: str, tx: TxState, kind: str, unseen: list[Any]) -> None:
        """Tell the agent its assignment (then what it has not seen); the caller answers once the agent shows it."""
        payload = {**tx.summary(self.inbox_id, self.config.name), "kind": kind}
        self._after_step(self._link.tell(user_id, "confirm", offer_id, payload))
        if unseen:
            self._link.deliver(user_id, tx.id, unseen)

    def _licensed_member(self, user_id: int) -> bool:
        membership = self.config.members.get(user_id)
        return membership is not None and membership[1]

    async def _claim(self, tx_id: int, user_id: int) -> Result:
        if self.config.mode != AssignmentMode.MANUAL:
            return refuse(409, f"only manual inboxes take claims; this inbox routes by {self.config.mode}")
        tx = self._txs.get(tx_id)
        if tx is None or tx.state == "assigned":
            return refuse(409, "the transaction was already claimed")
        if tx.state != "queued":
            return refuse(409, "the transaction is offered to another agent")
        if not self._licensed_member(user_id):
            return refuse(403, "only a licensed agent of this inbox may claim its transactions")
        return await self._take_directly(tx, user_id, "claimed")

    async def _hold_directly(self, summary: dict[str, Any], user_id: int, kind: str) -> tuple[str, Result | None]:
        """Reserve the agent's capacity outside routing (a claim, a transfer, WhatsApp Back): (offer id, refusal)."""
        offer_id = new_offer_id(summary["transaction_id"])
        answer = await self._link.call(user_id, "hold", {**summary, "offer_id": offer_id, "kind": kind}, True)
        if answer is None:
            self._link.tell(user_id, "release", offer_id, "rescinded")
            return offer_id, refuse(409, "the agent is unavailable right now")
        self._link.update(answer["snapshot"])
        return offer_id, None if answer["ok"] else refuse(409, answer["reason"])

    async def _take_directly(self, tx: TxState, user_id: int, kind: str, **detail: Any) -> Result:
        """A claim or a transfer: hold the agent's capacity, commit the assignment, confirm it."""
        offer_id, refusal = await self._hold_directly(tx.summary(self.inbox_id, self.config.name), user_id, kind)
        if refusal is not None:
            return refusal
        previous_agent = tx.agent_id if tx.state == "assigned" else None
        previous_offer = (tx.offered_to, tx.offer_id) if tx.state == "offered" else None
        try:
            assigned, unseen = await self._assign(tx, user_id, kind, offer_id=offer_id, **detail)
        except BaseException:
            self._link.tell(user_id, "release", offer_id, "rescinded")
            raise
        if previous_offer is not None and previous_offer[0] is not None and previous_offer[1] is not None:
            self._link.tell(previous_offer[0], "release", previous_offer[1], "rescinded")
        if previous_agent is not None:
            self._after_step(self._link.tell(previous_agent, "end", tx.id, "transferred"))
        await self._confirm(user_id, offer_id, assigned, kind, unseen)
        return ok(tx.id)

    async def _close(self, tx_id: int, user_id: int, by_supervisor: bool) -> Result:
        tx = self._txs.get(tx_id)
        if tx is None:
            return refuse(409, "the transaction is already closed")
        if not by_supervisor and not (tx.state == "assigned" and tx.agent_id == user_id):
            return refuse(403, "only the agent handling this transaction may close it")
        await self._save(tx.closed(utcnow()), "closed", user_id)
        self._forget(tx)
        if tx.state == "assigned" and tx.agent_id is not None:
            self._after_step(self._link.tell(tx.agent_id, "end", tx.id, "closed"))
        if tx.state == "offered" and tx.offered_to is not None and tx.offer_id is not None:
            self._link.tell(tx.offered_to, "release", tx.offer_id, "rescinded")
        self.request_routing()
        return ok(tx.id)

    async def _transfer(self, tx_id: int, by_user_id: int | None, to_user_id: int | None) -> Result:
        tx = self._txs.get(tx_id)
        if tx is None:
            return refuse(409, "the transaction is closed")
        previous = tx.agent_id if tx.state == "assigned" else None
        if to_user_id is not None:
            if not self._licensed_member(to_user_id):
                return refuse(422, f"user {to_user_id} is not a licensed agent of this inbox")
            if previous == to_user_id:
                return refuse(409, "the transaction is already with that agent")
            answer = await self._take_directly(tx, to_user_id, "transferred", from_agent=previous, by=by_user_id)
            if answer["status"] != 200:
                return answer
        else:
            queued = tx.back_to_queue(previous)
            await self._save(queued, "transferred", None, from_agent=previous, to_queue=True, by=by_user_id)
            self._cancel_timer(tx.id)
            self._remember(queued)
            if tx.state == "offered" and tx.offered_to is not None and tx.offer_id is not None:
                self._link.tell(tx.offered_to, "release", tx.offer_id, "rescinded")
            if previous is not None:
                self._after_step(self._link.tell(previous, "end", tx.id, "transferred"))
        self.request_routing()
        return ok(tx.id)

    # ------------------------------------------------------------------ WhatsApp Back

    async def open_outbound(self, customer: dict[str, Any], user_id: int) -> Result:
        """A conversation an agent starts (with an approved template), assigned to that agent from the start.

        `customer` is the customers row as a dict (`id`, `user_id`, `wa_id`, `username`, `name`). The
        customer's open conversation on this inbox is reused when it is already that agent's
        (`reused: true`); 409 when it is queued, offered or another agent's, or when the agent cannot
        take one more (presence, capacity); 403 for anyone but a licensed agent of the inbox. The
        customer's reply then attaches to it like any message and reaches the same agent.
        """
        return await self._answer(lambda: self._open_outbound(customer, user_id))

    async def _open_outbound(self, customer: dict[str, Any], user_id: int) -> Result:
        if not self._licensed_member(user_id):
            return refuse(403, "only a licensed agent of this inbox may start a conversation on it")
        current_id = self._by_customer.get(int(customer["id"]))
        current = self._txs.get(current_id) if current_id is not None else None
        if current is not None:
            if current.state == "assigned" and current.agent_id == user_id:
                return {**ok(current.id), "reused": True}
            owner = "another agent's" if current.state == "assigned" else f"{current.state} for routing"
            return refuse(409, f"the customer already has an open conversation on this inbox ({owner})")
        # Capacity first (nothing is written if the agent cannot take it), then one commit.
        offer_id, refusal = await self._hold_directly(
            {"transaction_id": 0, "inbox_id": self.inbox_id, "customer": customer}, user_id, "outbound")
        if refusal is not None:
            return refusal
        now = utcnow()
        customer_id = int(customer["id"])
        row: dict[str, Any] = {
            "org_id": self.org_id, "inbox_id": self.inbox_id, "customer_id": customer_id,
            "customer_wa_id": customer.get("wa_id"), "customer_name": customer.get("name"), "state": "assigned",
            "agent_id": user_id, "assigned_at": now, "waiting_since": now, "created_at": now, "updated_at": now,
            "tried": []}
        try:
            async with self.db.session() as session:
                sticky_customer = await repo.sticky_customer(session, customer_id)

            def statements(connection: Connection) -> int:
                tx_id = repo.insert_transaction(connection, row)
                repo.remember_sticky_agent(connection, self.inbox_id, sticky_customer, user_id)
                repo.add_transaction_event(connection, tx_id, "opened_outbound", user_id, now, customer=customer_id)
                repo.add_transaction_event(connection, tx_id, "assigned", user_id, now, offer_id=offer_id,
                                           outbound=True)
                return tx_id

            tx_id = await self._write(statements)
        except BaseException:
            self._link.tell(user_id, "release", offer_id, "rescinded")
            raise
        tx = TxState(id=tx_id, customer_id=customer_id, state="assigned", waiting_since=now, agent_id=user_id,
                     assigned_at=now, customer=customer, sticky_agent=user_id)
        self._remember(tx)
        await self._confirm(user_id, offer_id, tx, "assigned", [])
        return {**ok(tx.id), "reused": False}

    # ------------------------------------------------------------------ events from agents and config

    async def agent_changed(self, snapshot: dict[str, Any]) -> None:
        """An agent of this inbox changed presence or capacity: refresh it and route what waits.

        A push that only repeats what an answer of the agent already told us is no new event.
        Snapshots carry (epoch, sequence): an older one that overtakes a newer one is ignored.
        """
        if not await self._ensure_active():
            return
        if self._config is not None and self._link.update(snapshot):
            self.request_routing()

    async def agent_withdrew(self, user_id: int, offer_id: str) -> None:
        """The agent went away or offline while holding our offer: rescind it and reroute at once (idempotent)."""
        if not await self._ensure_active():
            return
        async with self._lock:
            if not self._activated:
                return
            tx = next((t for t in self._txs.values() if t.offer_id == offer_id), None)
            if tx is not None and tx.state == "offered" and tx.offered_to == user_id:
                try:
                    await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent unavailable")
                    self.request_routing()
                except repo.Fenced:
                    self._fenced()

    async def config_changed(self) -> dict[str, Any]:
        """Mode, agents, proficiency or timers were edited: apply live, keeping queued and offered work.

        Only a hint: the control loop finds the new configuration version in the store anyway.
        """
        if not await self._ensure_active():
            return {"inbox_id": self.inbox_id, "exists": False}
        async with self._lock:
            if self._activated:
                try:
                    await self._reload_config()
                    self.request_routing()
                except repo.Fenced:
                    self._fenced()
        return {"inbox_id": self.inbox_id, "exists": self._config is not None, "open": len(self._txs)}

    async def _reload_config(self) -> None:
        """Reload the configuration (lock held); offers to agents no longer in the inbox are rescinded."""
        async with self.db.session() as session:
            config = await repo.load_inbox_config(session, self.inbox_id)
            if config is None:
                return
            agents = await repo.load_agent_snapshots(session, config.members)
        joined = set(config.members) - set(self._config.members if self._config is not None else ())
        self._config_stale = False
        self._config = config
        self._link.load(frozenset(config.members), agents)
        for user_id in joined:
            # A new member at work pushes its snapshots here from now on (it caches the inboxes it serves);
            # an offline one is left asleep and reads them when it next starts or changes presence.
            if self._link.status_of(user_id) not in (None, "offline"):
                self._link.tell(user_id, "resync")
        for tx in list(self._txs.values()):
            membership = config.members.get(tx.offered_to) if tx.offered_to is not None else None
            if tx.state == "offered" and (membership is None or not membership[1]):
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent left the inbox")

    # ------------------------------------------------------------------ store and agents

    async def _save(self, tx: TxState, event: str, agent_id: int | None, **detail: Any) -> None:
        """One step's commit: the transaction row and its audit event."""
        now = utcnow()

        def statements(connection: Connection) -> None:
            repo.save_transaction(connection, tx.id, tx.columns(now))
            repo.add_transaction_event(connection, tx.id, event, agent_id, now, **detail)

        await self._write(statements)
