"""An inbox's messages in: stored messages attached to their customer's conversation (one opened if needed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from actors import inbox_metrics
from actors.inbox_core import InboxCore, ownership, repo, streams
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from store.agent_store_steps import Told
    from store.agent_streams import StreamEvent

# Unrouted messages are read from the store in pages of this size.
INGEST_PAGE = 500


class InboxIngest(InboxCore):
    """Messages forwarded by the gateway or found unrouted in the store, attached in one commit per step."""

    # ------------------------------------------------------------------ ingest

    async def ingest(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach stored messages to their customer's transaction, or have the next routing pass open one.

        Idempotent: a message already attached (a redelivery, a recovery pass) is skipped. Whatever is not attached
        now (a new customer's, waiting for its conversation's commit; the inbox reloading; a failed commit) stays
        unattached in the store, where the control loop finds it. `attached`: the messages attached now;
        `opening`: those the commit opening their conversation attaches.
        """
        if not await self._ensure_active():
            return {"attached": 0, "opening": 0}
        # Follow-ups the intake attached and showed: no write, no decision, so no lock either (a step holding it
        # waits on the store or an agent); the agent is told at once.
        shown, told, rest = self._shown_at_intake(messages)
        self._absorb_attached(shown, on_stream=True, told=told)
        attached, opening, opened = sum(map(len, shown.values())), 0, 0
        if rest:
            async with self._lock:
                if not self._activated:
                    return {"attached": attached, "opening": 0}
                try:
                    with inbox_metrics.timed(self.org_id, self.inbox_id, "ingest"):
                        attached_rest, opening, opened = await self._ingest_forwarded(rest)
                        attached += attached_rest
                except ownership.Fenced:
                    self._fenced()
                    return {"attached": attached, "opening": 0}
        inbox_metrics.routed(self.org_id, self.inbox_id, attached)
        if opened:
            # Opened (and offered) by a pass of its own: ingests arriving meanwhile share it, and the forward returns
            # at once. Follow-ups of open conversations change nobody's eligibility: no pass for them.
            self.request_routing()
        return {"attached": attached, "opening": opening}

    def _shown_at_intake(self, messages: list[dict[str, Any]]) -> tuple[dict[int, list[dict[str, Any]]], Told,
                                                                        list[dict[str, Any]]]:
        """(transaction id -> its follow-ups the gateway attached at intake, in order; their events as the intake
        stored them on their agents' streams; the other messages).

        Such a follow-up (its conversation held by an agent) is on the agent's stream from the intake's commit: the
        agent is only told. One of a conversation this inbox no longer holds (closed meanwhile) is neither: its
        stream showed it before the close."""
        shown: dict[int, list[dict[str, Any]]] = {}
        told: Told = {}
        rest = []
        for message in messages:
            attached_to = message.get("transaction_id")
            if attached_to is None:
                rest.append(message)
            elif (payload := repo.forwarded_payload(message)) is not None and attached_to in self._txs:
                shown.setdefault(attached_to, []).append(payload)
                if message.get("shown_as"):
                    agent_id, event = message["shown_as"]
                    told.setdefault(agent_id, []).append(event)
        return shown, told, rest

    async def _ingest_forwarded(self, messages: list[dict[str, Any]]) -> tuple[int, int, int]:
        """(messages attached, messages joining a conversation being opened, conversations to open), of messages
        the intake did not attach.

        Those of customers with an open conversation here are attached without reading the store first (the
        gateway sent what it stored): one write. Those of customers with none, forwarded with what opening one
        needs (`actors.messages.StoredMessage.opening`), join the conversation the next routing pass opens: no
        read, no write. The rest, and any the write left alone (attached meanwhile, customer merged since), go
        through the step that reads the store."""
        known: dict[int, list[dict[str, Any]]] = {}
        new: list[tuple[dict[str, Any], int | None]] = []  # (message, its customer's sticky agent)
        for message in messages:
            payload = repo.forwarded_payload(message)
            if payload is None:
                continue
            if (tx_id := self._by_customer.get(payload["customer_id"])) is not None:
                known.setdefault(tx_id, []).append(payload)
            elif (opening := message.get("opening")) and not any(c in self._by_customer
                                                                   for c in opening["customer_ids"]):
                new.append(({**payload, "customer_ids": list(opening["customer_ids"])}, opening["sticky_agent"]))
        opening_now, opened_now = self._open_for(new)
        attached: set[int] = set()
        if known:
            inbox_id, org_id, agents = self.inbox_id, self.org_id, self._agents_of(known)

            def statements(connection: Connection) -> tuple[set[int], Told]:
                done: set[int] = set()
                shown: list[StreamEvent] = []
                for tx_id, payloads in known.items():  # one customer per conversation
                    now_attached = repo.attach_if_unattached(connection, tx_id, inbox_id, payloads[0]["customer_id"],
                                                             [m["id"] for m in payloads])
                    done |= now_attached
                    if tx_id in agents:
                        shown += [streams.message_shown(agents[tx_id], tx_id, m) for m in payloads
                                  if m["id"] in now_attached]
                return done, streams.append_to_streams(connection, org_id, shown, utcnow())

            attached, told = await self._write(statements)
            self._absorb_attached({tx_id: [m for m in payloads if m["id"] in attached]
                                   for tx_id, payloads in known.items()}, on_stream=True, told=told)
        taken = attached | {m["id"] for m, _ in new}
        rest = [m["id"] for m in messages if m["id"] not in taken]
        if not rest:
            return len(attached), opening_now, opened_now
        # A message of a customer whose conversation is being opened joins it there: the store says whose it is.
        attached_rest, opening, opened, _ = await self._ingest_page(rest)
        return len(attached) + attached_rest, opening_now + opening, opened_now + opened

    def _open_for(self, messages: list[tuple[dict[str, Any], int | None]]) -> tuple[int, int]:
        """Messages of customers with no open conversation here, forwarded with what opening one needs (their
        aliases and sticky agent, read at intake): each joins its customer's conversation being opened, or starts
        one, with no read. The opening commit checks that what the intake read still holds
        (`store.conversation_openings`). (messages joining, conversations to open.)"""
        now = utcnow()
        counts = [self._opens.take_in(self.org_id, self.inbox_id, message, sticky, now) for message, sticky in messages]
        return sum(joined for joined, _ in counts), sum(opened for _, opened in counts)

    async def _ingest_stored(self) -> None:
        """Take every unrouted message of the inbox, page after page (lock held)."""
        read_on: int | None = 0
        while read_on is not None:
            read_on = (await self._ingest_page(None, read_on))[3]

    async def _ingest_page(self, ids: list[int] | None, after_id: int = 0) -> tuple[int, int, int, int | None]:
        """One step (lock held): attach the messages of open conversations in one commit; those of other customers
        join the conversation the next routing pass opens for them (`actors.pending_opens`), with no write here.

        (messages attached, messages joining a conversation to open, new conversations to open, the id to read on
        from when the page came back full, else None)."""
        now = utcnow()
        inbox_id, by_customer = self.inbox_id, dict(self._by_customer)  # the read step runs in another thread
        opening = self._opens.customers()

        async def read(session: AsyncSession) -> tuple[list[dict[str, Any]], dict[int, int | None],
                                                        dict[int, int | None]]:
            fresh = await repo.unrouted_messages(session, inbox_id, ids=ids, after_id=after_id,
                                                 limit=None if ids is not None else INGEST_PAGE)
            # The customer's open conversation, else one of a customer merged into it (store/customers.py).
            open_tx = {m["id"]: next((by_customer[c] for c in m["customer_ids"] if c in by_customer), None)
                       for m in fresh}
            # Sticky memory of the customers whose conversation is not open nor being opened yet.
            new = {m["customer_id"] for m in fresh if open_tx[m["id"]] is None
                   and not any(c in opening for c in m["customer_ids"])}
            sticky = {key: await repo.sticky_agent_of(session, inbox_id, key) for key in new}
            return fresh, open_tx, sticky

        fresh, open_tx, sticky = await self.db.read(read)
        if not fresh:
            return 0, 0, 0, None
        agents = self._agents_of(tx_id for tx_id in open_tx.values() if tx_id is not None)
        by_tx: dict[int, list[dict[str, Any]]] = {}
        for message in fresh:
            if (tx_id := open_tx[message["id"]]) is not None:
                by_tx.setdefault(tx_id, []).append(message)
        if by_tx:
            org_id = self.org_id

            def statements(connection: Connection) -> Told:
                for tx_id, messages in by_tx.items():
                    repo.attach_messages(connection, tx_id, [m["id"] for m in messages])
                return streams.append_to_streams(connection, org_id, [
                    streams.message_shown(agents[tx_id], tx_id, m)
                    for tx_id, messages in by_tx.items() if tx_id in agents for m in messages], now)

            told = await self._write(statements)
            self._absorb_attached(by_tx, on_stream=True, told=told)
        joining = opened = 0
        for message in fresh:
            if open_tx[message["id"]] is None:
                joined, started = self._opens.take_in(self.org_id, self.inbox_id, message,
                                                      sticky.get(message["customer_id"]), now)
                joining, opened = joining + joined, opened + started
        full = ids is None and len(fresh) == INGEST_PAGE
        return sum(map(len, by_tx.values())), joining, opened, int(fresh[-1]["id"]) if full else None

    def _agents_of(self, tx_ids: Iterable[int]) -> dict[int, int]:
        """The agent of each of these conversations that one holds: a message attached to it in a commit is shown on
        that agent's stream in the same commit (`store.agent_streams`)."""
        return {tx_id: tx.agent_id for tx_id in tx_ids if (tx := self._txs.get(tx_id)) is not None
                and tx.state == "assigned" and tx.agent_id is not None}
