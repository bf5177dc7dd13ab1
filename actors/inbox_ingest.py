"""An inbox's messages in: stored messages attached to their customer's conversation (one opened if needed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from actors import inbox_metrics
from actors.inbox_core import InboxCore, repo, streams
from actors.transaction_state import TxState
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from store.agent_streams import StreamEvent

# Unrouted messages are read from the store in pages of this size.
INGEST_PAGE = 500


class InboxIngest(InboxCore):
    """Messages forwarded by the gateway or found unrouted in the store, attached in one commit per step."""

    # ------------------------------------------------------------------ ingest

    async def ingest(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach stored messages to their customer's transaction (opening one if needed) and route.

        Idempotent: a message already attached (a redelivery, a recovery pass) is skipped. Whatever
        is not attached now (the inbox reloading, a failed commit) stays unattached in the store,
        where the control loop finds it.
        """
        if not await self._ensure_active():
            return {"attached": 0}
        # Follow-ups the intake attached and showed: no write, no decision, so no lock either (a step holding it
        # waits on the store or an agent); the agent is told at once.
        shown, rest = self._shown_at_intake(messages)
        self._absorb_attached(shown, on_stream=True)
        attached, opened = sum(map(len, shown.values())), 0
        if rest:
            async with self._lock:
                if not self._activated:
                    return {"attached": attached}
                try:
                    with inbox_metrics.timed(self.org_id, self.inbox_id, "ingest"):
                        attached_rest, opened = await self._ingest_forwarded(rest)
                        attached += attached_rest
                except repo.Fenced:
                    self._fenced()
                    return {"attached": attached}
        inbox_metrics.routed(self.org_id, self.inbox_id, attached)
        if opened:
            # Routed in a pass of its own: ingests arriving meanwhile share it, and the forward returns at once.
            # Follow-ups of open conversations change nobody's eligibility: no pass for them.
            self.request_routing()
        return {"attached": attached}

    def _shown_at_intake(self, messages: list[dict[str, Any]]) -> tuple[dict[int, list[dict[str, Any]]],
                                                                        list[dict[str, Any]]]:
        """(transaction id -> its follow-ups the gateway attached at intake, in order; the other messages).

        Such a follow-up (its conversation held by an agent) is on the agent's stream from the intake's commit: the
        agent is only told. One of a conversation this inbox no longer holds (closed meanwhile) is neither: its
        stream showed it before the close."""
        shown: dict[int, list[dict[str, Any]]] = {}
        rest = []
        for message in messages:
            attached_to = message.get("transaction_id")
            if attached_to is None:
                rest.append(message)
            elif (payload := repo.forwarded_payload(message)) is not None and attached_to in self._txs:
                shown.setdefault(attached_to, []).append(payload)
        return shown, rest

    async def _ingest_forwarded(self, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(messages attached, conversations opened), of messages the intake did not attach.

        Those of customers with an open conversation here are attached without reading the store first (the
        gateway sent what it stored): one write. The rest, and any the write left alone (attached meanwhile,
        customer merged since), go through the step that reads the store."""
        known: dict[int, list[dict[str, Any]]] = {}
        for message in messages:
            payload = repo.forwarded_payload(message)
            if payload is not None and (tx_id := self._by_customer.get(payload["customer_id"])) is not None:
                known.setdefault(tx_id, []).append(payload)
        attached: set[int] = set()
        if known:
            inbox_id, org_id, agents = self.inbox_id, self.org_id, self._agents_of(known)

            def statements(connection: Connection) -> set[int]:
                done: set[int] = set()
                shown: list[StreamEvent] = []
                for tx_id, payloads in known.items():  # one customer per conversation
                    now_attached = repo.attach_if_unattached(connection, tx_id, inbox_id, payloads[0]["customer_id"],
                                                             [m["id"] for m in payloads])
                    done |= now_attached
                    if tx_id in agents:
                        shown += [streams.message_shown(agents[tx_id], tx_id, m) for m in payloads
                                  if m["id"] in now_attached]
                streams.append_to_streams(connection, org_id, shown, utcnow())
                return done

            attached = await self._write(statements)
            self._absorb_attached({tx_id: [m for m in payloads if m["id"] in attached]
                                   for tx_id, payloads in known.items()}, on_stream=True)
        rest = [m["id"] for m in messages if m["id"] not in attached]
        attached_rest, opened = await self._ingest_page(rest) if rest else (0, 0)
        return len(attached) + attached_rest, opened

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

        agents = self._agents_of(tx_id for tx_id in open_tx.values() if tx_id is not None)
        org_id = self.org_id

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
            streams.append_to_streams(connection, org_id, [
                streams.message_shown(agents[tx_id], tx_id, m)
                for tx_id, messages in by_tx.items() if tx_id in agents for m in messages], now)
            return opened, by_tx

        opened, by_tx = await self._write(statements)
        for key, tx_id in opened.items():
            self._remember(TxState(id=tx_id, customer_id=key, state="queued", waiting_since=now,
                                   sticky_agent=sticky[key], first_message=first_of[key],
                                   customer=first_of[key]["customer"]))
        self._absorb_attached(by_tx, on_stream=True)
        return len(fresh), len(opened)

    def _agents_of(self, tx_ids: Iterable[int]) -> dict[int, int]:
        """The agent of each of these conversations that one holds: a message attached to it in a commit is shown on
        that agent's stream in the same commit (`store.agent_streams`)."""
        return {tx_id: tx.agent_id for tx_id in tx_ids if (tx := self._txs.get(tx_id)) is not None
                and tx.state == "assigned" and tx.agent_id is not None}
