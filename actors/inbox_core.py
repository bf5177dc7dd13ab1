"""The inbox actor's core: its state, activation from the store, the fencing epoch, the control loop and the
offer timers.

The behaviour around it lives beside it, each in its own module: `actors.inbox_ingest` (messages in),
`actors.inbox_routing` (a routing pass), `actors.inbox_answers` (the agents' and supervisors' actions),
`actors.inbox_events` (what agents and configuration changes tell it); `actors.inbox_actor` composes them into
the deployed class.

Every step is: decide (pure) → commit ONE store transaction → change memory → tell agents. The
store is the single truth: an activation (first call, a restart, or after being fenced) reloads it,
re-arms the offer timers and has the member agents reconcile. Each activation takes a new fencing
epoch, and every write is conditional on it, so a stale owner (another deployment, a zombie) can
never overwrite a newer one's work. The gateways' sweep of the store (`actors.inbox_sweep`, one read for every
inbox every few seconds) tells it of a new configuration version, a newer owner, and stored messages no forward
delivered (`actors.inbox_events`, `store_watched`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from actors import inbox_metrics
from actors.activation import StoreBackedActor
from actors.agent_link import AgentLink
from actors.directory import Directory
from actors.lazy_store import lazy_module
from actors.pending_opens import PendingOpens
from actors.transaction_state import TxState
from config.actor_settings import ActorSettings
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from store import agent_capacity as capacity
    from store import agent_streams as streams
    from store import conversation_openings as openings
    from store import inbox_ownership as ownership
    from store import routing_repo as repo
    from store.agent_store_steps import Told
else:
    # Loaded at the inbox's activation: an agent's process loads this class to call inboxes (`actors.lazy_store`).
    repo = lazy_module("store.routing_repo")
    ownership = lazy_module("store.inbox_ownership")
    streams = lazy_module("store.agent_streams")
    capacity = lazy_module("store.agent_capacity")
    openings = lazy_module("store.conversation_openings")

log = logging.getLogger("actors.inbox_actor")

T = TypeVar("T")

Result = dict[str, Any]


def ok(tx_id: int) -> Result:
    return {"status": 200, "transaction_id": tx_id}


def done(tx: TxState) -> Result:
    """An action's answer with the conversation as the step left it: the API answers without reading it again."""
    return {**ok(tx.id), "transaction": tx.view()}


def refuse(status: int, detail: str) -> Result:
    return {"status": status, "detail": detail}


RELOADING = refuse(503, "the inbox is reloading its state; retry shortly")


class InboxCore(StoreBackedActor):
    BUSY_PROCESS = True  # every message and every conversation step passes through an inbox

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
        self._config: ownership.InboxConfig | None = None
        self._config_stale = False
        self._epoch = 0
        self._txs: dict[int, TxState] = {}
        self._by_customer: dict[int, int] = {}
        # New customers' conversations, opened by the next routing pass's commit (memory only: their messages wait
        # unattached in the store, where a reload finds them).
        self._opens = PendingOpens()
        self._routing_requested: asyncio.Task[None] | None = None
        self._routing_wanted = False
        # Messages handed to a held conversation's agent whose delivery it has not answered yet (its stream may not
        # show them): transaction id -> message id -> the delivery's answer. Memory only, like the mailbox holding
        # the delivery: a close keeps a message with its conversation only once its agent answered for it.
        self._delivering: dict[int, dict[int, asyncio.Future[Any]]] = {}

    # ------------------------------------------------------------------ activation

    @property
    def config(self) -> ownership.InboxConfig:
        assert self._config is not None
        return self._config

    def _exists(self) -> bool:
        return self._config is not None

    async def _load(self) -> None:
        async with self.db.session() as session:
            epoch = await ownership.take_inbox_ownership(session, self.inbox_id)
            if epoch is None:
                return
            config = await ownership.load_inbox_config(session, self.inbox_id)
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
                first = firsts.get(row.id)
                txs.append(replace(TxState.of(row), sticky_agent=sticky,
                                   past_offerees=frozenset(offerees.get(row.id, set())),
                                   first_message=first, customer=customers.get(row.customer_id, {}),
                                   current_offer_is_sticky=row.state == "offered" and row.offered_to == sticky,
                                   # Shown with the offer its agent accepted; what came after (and the first
                                   # message of a conversation claimed or transferred, shown only by a confirm
                                   # that may have died with the previous process) is handed over again at
                                   # activation: the agent skips what its stream showed as a message.
                                   handed=frozenset({int(first["id"])} if first and row.agent_id in
                                                    offerees.get(row.id, set()) else ())))
        # Committed: the new epoch is ours.
        self._epoch, self._config = epoch, config
        self._link.load(frozenset(config.members), agents)
        self._txs, self._by_customer = {}, {}
        for tx in txs:
            self._remember(tx)

    async def _on_activated(self) -> None:
        inbox_metrics.activated(self.org_id, self.inbox_id)
        # Anything attached to a held conversation that its agent's stream may not show (a store written by an
        # earlier release, where an attach did not always show the message in its own commit): the agents skip
        # what their stream showed.
        await self._hand_over([tx.id for tx in self._txs.values() if tx.state == "assigned"])
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
        self._delivering.pop(tx.id, None)
        if self._by_customer.get(tx.customer_id) == tx.id:
            del self._by_customer[tx.customer_id]
        self._cancel_timer(tx.id)

    async def _write(self, statements: Callable[[Connection], T], rotation_pointer: int | None = None) -> T:
        """A step's one store transaction, after its reads: refused (Fenced) once a newer activation owns the inbox.

        `statements` run on a worker thread (file-backed SQLite): they touch no memory of this actor.
        `rotation_pointer`: a new one, written by the fence's statement.
        """
        inbox_id, epoch = self.inbox_id, self._epoch

        def fenced(connection: Connection) -> tuple[int, T]:
            return ownership.fence(connection, inbox_id, epoch, rotation_pointer), statements(connection)

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
        """Never dies: the queue's gauge, and a configuration a write found newer, every few seconds. It reads nothing:
        what only the store shows (a newer configuration or owner, messages no forward brought) comes from the
        gateways' sweep of every inbox at once (`actors.inbox_events.InboxEvents.store_watched`)."""
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
        inbox_metrics.queue_depth(self.org_id, self.inbox_id,
                                  sum(1 for tx in self._txs.values() if tx.state in ("queued", "offered")))
        if self._config_stale:
            self.request_routing()  # the pass reloads it

    async def _hand_over(self, tx_ids: list[int]) -> None:
        """The messages of the conversations their agent was not handed, page after page (the lock held, or
        activating)."""
        inbox_id = self.inbox_id
        while known := {tx_id: tx.handed for tx_id in tx_ids if (tx := self._txs.get(tx_id)) is not None
                        and tx.state == "assigned"}:

            async def read(session: AsyncSession, known: dict[int, frozenset[int]] = known
                           ) -> dict[int, list[dict[str, Any]]]:
                return {tx_id: await repo.messages_except(session, inbox_id, tx_id, handed)
                        for tx_id, handed in known.items()}

            pages = await self.db.read(read)
            self._absorb_attached(pages)
            tx_ids = [tx_id for tx_id, page in pages.items() if len(page) == repo.HAND_OVER_PAGE]

    def _absorb_attached(self, by_tx: dict[int, list[dict[str, Any]]], on_stream: bool = False,
                         told: Told | None = None) -> None:
        """After the commit: each conversation shows its customer's newest identity, and its agent gets the messages.
        `on_stream`: shown on the agent's stream by the commit that attached them (the gateway's intake, or this
        inbox's): the agent is only told (they count as shown already), with their events as stored (`told`)."""
        for tx_id, messages in by_tx.items():
            tx = self._txs.get(tx_id)
            if tx is None or not messages:
                continue
            tx = replace(tx, customer=messages[-1]["customer"])
            if tx.state == "assigned" and tx.agent_id is not None:
                if on_stream:
                    # Only the agent's own events of this conversation: another agent's stream is not its own.
                    events = [event for event in (told or {}).get(tx.agent_id, ())
                              if event[3].get("transaction_id") == tx.id]
                    self._link.deliver(tx.agent_id, tx.id, messages, events or None)
                else:
                    self._deliver(tx.agent_id, tx.id, messages)
                tx = replace(tx, handed=tx.handed | {m["id"] for m in messages})
            elif tx.messages_known:
                tx = replace(tx, waited=tx.waited + tuple(messages))
            self._txs[tx_id] = tx

    def _deliver(self, user_id: int, tx_id: int, messages: list[dict[str, Any]]) -> None:
        """Hand messages to the agent holding the conversation; they count as shown once the agent answered."""
        self._showing(tx_id, [int(m["id"]) for m in messages], self._link.deliver(user_id, tx_id, messages))

    def _showing(self, tx_id: int, ids: list[int], answer: asyncio.Future[Any]) -> None:
        """The messages `ids` of the conversation are shown once the agent's `answer` (to a delivery, or to the
        confirm carrying the first message) has come."""
        delivering = self._delivering.setdefault(tx_id, {})
        for message_id in ids:
            delivering[message_id] = answer

        def answered(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                return  # never shown (the mailbox gave up): a close hands them back
            waiting = self._delivering.get(tx_id)
            if waiting is None:
                return
            for message_id in ids:
                if waiting.get(message_id) is done:
                    del waiting[message_id]
            if not waiting:
                del self._delivering[tx_id]

        answer.add_done_callback(answered)

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
            except ownership.Fenced:
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
        inbox_metrics.offer(self.org_id, self.inbox_id, kind)
        self._cancel_timer(tx.id)
        self._remember(requeued)
        # The agent's answer (free again, or set away) reaches routing as its new snapshot, which asks for a
        # pass; an API caller waits for it once the lock is released.
        self._after_step(self._link.tell(user_id, "release", offer_id, kind))

    # ------------------------------------------------------------------ store and agents

    async def _save(self, tx: TxState, event: str, agent_id: int | None, *, leaving: int | None = None,
                    **detail: Any) -> tuple[datetime, Told]:
        """One step's commit: the transaction row and its audit event; when it leaves its agent (`leaving`),
        the agent's stream shows that in the same commit. The commit's time, and what it appended to the stream."""
        now = utcnow()
        org_id, inbox_id = self.org_id, self.inbox_id

        def statements(connection: Connection) -> Told:
            repo.save_transaction(connection, tx.id, tx.columns(now))
            repo.add_transaction_event(connection, tx.id, event, agent_id, now, **detail)
            if leaving is None:
                return {}
            return streams.work_left(connection, org_id, leaving, tx.id, inbox_id, "transferred", now)

        return now, await self._write(statements)

    def _after_step(self, answer: asyncio.Future[Any]) -> None:
        """An agent's answer the API caller of this step waits for (nobody waits in a timer's or a pass's step)."""
        if self._agents_to_answer is not None:
            self._agents_to_answer.append(answer)

    # ------------------------------------------------------------------ what the other parts provide

    def request_routing(self) -> None:
        raise NotImplementedError  # actors.inbox_routing.InboxRouting

    async def _ingest_stored(self) -> None:
        raise NotImplementedError  # actors.inbox_ingest.InboxIngest

    async def _reload_config(self) -> None:
        raise NotImplementedError  # actors.inbox_events.InboxEvents

    async def _ingest_page(self, ids: list[int] | None, after_id: int = 0) -> tuple[int, int, int, int | None]:
        raise NotImplementedError  # actors.inbox_ingest.InboxIngest
