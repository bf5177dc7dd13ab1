"""The agents' and supervisors' actions on an inbox's conversations: accept, decline, claim, close, transfer,
and WhatsApp Back (a conversation an agent starts).

An offer is a reservation with an id (Twilio TaskRouter's model): the agent actor holds it, the inbox commits
it (and its event on the agent's stream), the agent is told; accept/decline/timeout end it. An assignment, a
close and a transfer write their events on the agents' streams in the step's own commit (`store.agent_streams`).
Each action is one locked step whose caller is answered once the agents show its outcome, waited for with the
lock released."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from actors import inbox_metrics
from actors.inbox_core import RELOADING, InboxCore, Result, capacity, done, log, ok, ownership, refuse, repo, streams
from actors.offer_plan import new_offer_id
from actors.transaction_state import TxState
from routing import AssignmentMode
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from store.agent_store_steps import Told


class InboxAnswers(InboxCore):
    """API actions as locked steps; the agents' answers their callers wait for come after the lock."""

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
                with inbox_metrics.timed(self.org_id, self.inbox_id, "answer"):
                    result = await step()
            except ownership.Fenced:
                return self._fenced()
            finally:
                waits, self._agents_to_answer = self._agents_to_answer, None
        await self._link.wait_for_answers(waits or [])
        return result

    async def accept(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._accept(tx_id, user_id))

    async def decline(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._decline(tx_id, user_id))

    async def claim(self, tx_id: int, user_id: int) -> Result:
        return await self._answer(lambda: self._claim(tx_id, user_id))

    async def close(self, tx_id: int, user_id: int, by_supervisor: bool) -> Result:
        # Deliveries of its messages the agent has not answered yet are waited for first, the lock released and
        # each until its deadline: the close keeps with the conversation only what its agent's stream shows.
        await self._link.wait_for_answers(list(set(self._delivering.get(tx_id, {}).values())))
        return await self._answer(lambda: self._close(tx_id, user_id, by_supervisor))

    async def transfer(self, tx_id: int, by_user_id: int | None, to_user_id: int | None) -> Result:
        """A supervisor moves a transaction to another agent of the inbox, or back to the queue (None)."""
        return await self._answer(lambda: self._transfer(tx_id, by_user_id, to_user_id))

    async def _accept(self, tx_id: int, user_id: int) -> Result:
        tx = self._txs.get(tx_id)
        if tx is not None and tx.state == "assigned" and tx.agent_id == user_id:
            return done(tx)  # a repeated accept (a retry after a lost answer) answers as the first did
        refusal = self._offer_check(tx, user_id)
        if refusal is not None:
            return refusal
        assert tx is not None and tx.offer_expires_at is not None and tx.offer_id is not None
        if utcnow() >= tx.offer_expires_at:  # the timer is due but has not run yet
            await self._end_offer(tx, "missed")
            self.request_routing()
            return refuse(409, "the offer expired")
        try:
            assigned, told = await self._assign(tx, user_id, "accepted", offer_id=tx.offer_id)
        except capacity.AtCapacity as error:
            await self._end_offer(tx, "rescinded", count_as_tried=False, reason=str(error))
            self.request_routing()
            return self._over_capacity(error)
        self._confirm(user_id, tx.offer_id, assigned, "accepted", told)
        inbox_metrics.offer_accepted(self.org_id, self.inbox_id, tx, assigned)
        # No longer holding an offer, the agent may take more work if under capacity. The pass runs
        # after this answer (as after every API step): an accept never waits for the queue's routing.
        self.request_routing()
        return done(assigned)

    async def _decline(self, tx_id: int, user_id: int) -> Result:
        tx = self._txs.get(tx_id)
        refusal = self._offer_check(tx, user_id)
        if refusal is not None:
            return refusal
        assert tx is not None
        await self._end_offer(tx, "declined")
        self.request_routing()
        return done(self._txs[tx.id])

    async def _assign(self, tx: TxState, user_id: int, kind: str, *, offer_id: str, leaving: int | None = None,
                      **detail: Any) -> tuple[TxState, Told]:
        """One step: the transaction is the agent's; they become the customer's sticky agent here. (It as assigned,
        what the commit appended to the agents' streams.)

        The agent's stream shows it in the same commit, with its first message and the messages that came while it
        was queued or offered (`store.agent_streams`): the agent reads them when confirmed and writes nothing. The
        agent it is transferred away from (`leaving`) sees that on its stream in the same commit too.
        """
        now = utcnow()
        shown = (tx.first_message or {}).get("id")
        inbox_id, org_id, inbox_name = self.inbox_id, self.org_id, self.config.name

        async def read(session: AsyncSession) -> tuple[int, list[dict[str, Any]]]:
            # What came while it waited, oldest first; a longer wait's rest is handed over after the commit.
            return (await repo.sticky_customer(session, tx.customer_id),
                    await repo.messages_except(session, inbox_id, tx.id, {shown} if shown is not None else set()))

        sticky_customer: int | None = None
        if tx.messages_known and leaving is None and len(tx.waited) < repo.HAND_OVER_PAGE:
            # Every message it has came through this inbox: no read step (the sticky customer is found in the write).
            unseen = sorted((m for m in tx.waited if m["id"] != shown), key=lambda m: int(m["id"]))  # as stored
        else:
            sticky_customer, unseen = await self.db.read(read)
        # Only a conversation an agent holds (a transfer) has follow-ups attached meanwhile, by the intake.
        handed = {m["id"] for m in unseen} | ({shown} if shown is not None else set())
        assigned = replace(tx.assigned(user_id, now), handed=frozenset(handed))
        on_streams = [streams.work_started(user_id, kind, assigned.summary(inbox_id, inbox_name), offer_id)]
        on_streams += [streams.message_shown(user_id, tx.id, message) for message in unseen]
        if leaving is not None:
            on_streams.append(streams.work_ended(leaving, tx.id, inbox_id, "transferred"))

        def statements(connection: Connection) -> tuple[set[int], Told]:
            repo.save_transaction(connection, tx.id, assigned.columns(now))
            if sticky_customer is None:
                repo.remember_sticky_agent_of(connection, inbox_id, tx.customer_id, user_id)
            else:
                repo.remember_sticky_agent(connection, inbox_id, sticky_customer, user_id)
            repo.add_transaction_event(connection, tx.id, kind, user_id, now, offer_id=offer_id, **detail)
            told = streams.append_to_streams(connection, org_id, on_streams, now)
            capacity.check_capacity(connection, user_id, tx.id)
            if leaving is not None:
                streams.chat_ended(connection, leaving, now)
            if sticky_customer is not None and leaving is None and len(unseen) < repo.HAND_OVER_PAGE:
                return set(), told  # read under the lock, and nothing else attaches to a conversation no agent holds
            # Not on this agent's stream yet: a long wait's messages past the read's page, in a transfer the
            # follow-ups the intake attached (and showed the agent it leaves) since the read, and, shown from memory,
            # any the store holds that memory did not (checked in this transaction: one indexed query, no read step).
            return repo.attached_ids(connection, inbox_id, tx.id) - handed, told

        attached_since, told = await self._write(statements)
        self._cancel_timer(tx.id)
        self._remember(assigned)
        if attached_since:
            await self._hand_over([tx.id])  # the agent writes what its stream lacks
        return assigned, told

    def _confirm(self, user_id: int, offer_id: str, tx: TxState, kind: str, told: Told) -> None:
        """Tell the agent its assignment, which its stream shows already (`told`: the events the assignment's commit
        appended, so the agent need not read them); the caller answers once the agent has it."""
        payload = {**tx.summary(self.inbox_id, self.config.name), "kind": kind}
        self._after_step(self._link.tell(user_id, "confirm", offer_id, payload, streams.told_to(told, user_id)))

    def _over_capacity(self, error: capacity.AtCapacity) -> Result:
        """The assignment's commit counted more work than the agent's actor did (a hold its restarted process forgot,
        or one that lapsed while the commit was on its way): nothing was committed, and the agent rebuilds its work
        from the store."""
        log.warning("inbox %s: an assignment to agent %s refused by its commit: %s (the agent's actor counted less; "
                    "it resyncs)", self.inbox_id, error.user_id, error)
        self._link.tell(error.user_id, "resync")
        return refuse(409, str(error))

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
            assigned, told = await self._assign(tx, user_id, kind, offer_id=offer_id, leaving=previous_agent,
                                                **detail)
        except BaseException as error:
            self._link.tell(user_id, "release", offer_id, "rescinded")
            if isinstance(error, capacity.AtCapacity):
                return self._over_capacity(error)
            raise
        if previous_offer is not None and previous_offer[0] is not None and previous_offer[1] is not None:
            self._link.tell(previous_offer[0], "release", previous_offer[1], "rescinded")
        if previous_agent is not None:
            assert assigned.assigned_at is not None
            self._after_step(self._link.tell(previous_agent, "end", tx.id, "transferred",
                                             assigned.assigned_at.isoformat(), streams.told_to(told, previous_agent)))
        self._confirm(user_id, offer_id, assigned, kind, told)
        return done(assigned)

    async def _close(self, tx_id: int, user_id: int, by_supervisor: bool) -> Result:
        tx = self._txs.get(tx_id)
        if tx is None:
            return refuse(409, "the transaction is already closed")
        if not by_supervisor and not (tx.state == "assigned" and tx.agent_id == user_id):
            return refuse(403, "only the agent handling this transaction may close it")
        now = utcnow()
        closed, held, inbox_id, org_id = tx.closed(now), tx.state == "assigned", self.inbox_id, self.org_id
        # A message the inbox handed the agent counts as shown once the agent answered its delivery: one still in
        # this process's mailbox would be lost with it (a restart hands over only what open conversations hold).
        # Messages attached at intake or by this inbox are on the agent's stream from their commit: never among these
        # (only what a control pass handed over is).
        unshown = list(self._delivering.get(tx.id, {})) if held else []
        agent_id = tx.agent_id

        def statements(connection: Connection) -> tuple[list[int], Told]:
            # A follow-up stored before this commit is on the agent's stream before its close (attached and shown
            # at intake); one stored after it opens the customer's next conversation, as does one handed over
            # whose delivery the agent never answered.
            repo.save_transaction(connection, tx.id, closed.columns(now))
            repo.add_transaction_event(connection, tx.id, "closed", user_id, now)
            handed = repo.detach_messages(connection, inbox_id, tx.id, agent_id, unshown) \
                if unshown and agent_id is not None else []
            if held and agent_id is not None:
                # The agent's stream shows the close with it; the agent writes nothing for it.
                return handed, streams.work_left(connection, org_id, agent_id, tx.id, inbox_id, "closed", now)
            return handed, {}

        handed_back, told = await self._write(statements)
        self._forget(tx)
        if handed_back:
            await self._ingest_page(handed_back)
        if held and agent_id is not None:
            self._after_step(self._link.tell(agent_id, "end", tx.id, "closed", now.isoformat(),
                                             streams.told_to(told, agent_id)))
        if tx.state == "offered" and tx.offered_to is not None and tx.offer_id is not None:
            self._link.tell(tx.offered_to, "release", tx.offer_id, "rescinded")
        self.request_routing()
        return done(closed)

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
            self.request_routing()
            return answer
        else:
            queued = tx.back_to_queue(previous)
            at, told = await self._save(queued, "transferred", None, leaving=previous, from_agent=previous,
                                        to_queue=True, by=by_user_id)
            self._cancel_timer(tx.id)
            self._remember(queued)
            if tx.state == "offered" and tx.offered_to is not None and tx.offer_id is not None:
                self._link.tell(tx.offered_to, "release", tx.offer_id, "rescinded")
            if previous is not None:
                self._after_step(self._link.tell(previous, "end", tx.id, "transferred", at.isoformat(),
                                                 streams.told_to(told, previous)))
        self.request_routing()
        return done(queued)

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
        if self._opens.of([int(customer["id"])]) is not None:
            # The customer just wrote: their conversation opens with the inbox's next routing pass.
            return refuse(409, "the customer already has an open conversation on this inbox (queued for routing)")
        # Capacity first (nothing is written if the agent cannot take it), then one commit.
        offer_id, refusal = await self._hold_directly(
            {"transaction_id": 0, "inbox_id": self.inbox_id, "customer": customer}, user_id, "outbound")
        if refusal is not None:
            return refusal
        now = utcnow()
        customer_id = int(customer["id"])
        inbox_id, org_id, inbox_name = self.inbox_id, self.org_id, self.config.name
        row: dict[str, Any] = {
            "org_id": self.org_id, "inbox_id": self.inbox_id, "customer_id": customer_id,
            "customer_wa_id": customer.get("wa_id"), "customer_name": customer.get("name"), "state": "assigned",
            "agent_id": user_id, "assigned_at": now, "waiting_since": now, "created_at": now, "updated_at": now,
            "tried": []}
        try:
            async with self.db.session() as session:
                sticky_customer = await repo.sticky_customer(session, customer_id)

            def opened(tx_id: int) -> TxState:
                return TxState(id=tx_id, customer_id=customer_id, state="assigned", waiting_since=now,
                               agent_id=user_id, assigned_at=now, customer=customer, sticky_agent=user_id,
                               created_at=now)

            def statements(connection: Connection) -> tuple[TxState, Told]:
                tx = opened(repo.insert_transaction(connection, row))
                repo.remember_sticky_agent(connection, inbox_id, sticky_customer, user_id)
                repo.add_transaction_event(connection, tx.id, "opened_outbound", user_id, now, customer=customer_id)
                repo.add_transaction_event(connection, tx.id, "assigned", user_id, now, offer_id=offer_id,
                                           outbound=True)
                told = streams.append_to_streams(connection, org_id, [
                    streams.work_started(user_id, "assigned", tx.summary(inbox_id, inbox_name), offer_id)], now)
                capacity.check_capacity(connection, user_id, tx.id)
                return tx, told

            tx, told = await self._write(statements)
        except BaseException as error:
            self._link.tell(user_id, "release", offer_id, "rescinded")
            if isinstance(error, capacity.AtCapacity):
                return self._over_capacity(error)
            raise
        self._remember(tx)
        self._confirm(user_id, offer_id, tx, "assigned", told)
        return {**ok(tx.id), "reused": False}
