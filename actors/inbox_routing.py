"""An inbox's routing pass: the offers planned as data (`actors.offer_plan`), held, then committed together."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from actors import inbox_metrics
from actors.inbox_core import InboxCore, log, openings, ownership, repo, streams
from actors.offer_plan import PlannedOffer, RoutingSettings, plan_offers
from actors.pending_opens import PendingOpen
from routing import AssignmentMode, orders_by_idle
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from store.agent_store_steps import Told

# After a pass's commit failed, the conversations it was opening are tried again this much later.
RETRY_OPENING_S = 1.0


class InboxRouting(InboxCore):
    """Offers the waiting conversations: no agent's answer is awaited under the inbox's lock."""

    # ------------------------------------------------------------------ routing

    def _routing_settings(self) -> RoutingSettings:
        config = self.config
        return RoutingSettings(inbox_id=self.inbox_id, inbox_name=config.name, mode=AssignmentMode(config.mode),
                               reassign_after_s=config.reassign_after_s, dials_per_agent=config.dials_per_agent,
                               rotation_pointer=config.rotation_pointer)

    async def _routing_pass(self) -> bool:
        """Open the conversations new customers started and offer the waiting ones: plan under the lock, have the
        agents hold the offers together with the lock released (ingests and answers go on meanwhile), then commit
        every new conversation and every held offer in one store transaction. True when another pass is wanted (a
        refusal changed what the inbox knows of an agent).
        """
        await self._link.settle()
        opening: list[PendingOpen] = []
        try:
            async with self._lock:
                if not self._activated:
                    return False
                if self._config_stale:
                    await self._reload_config()
                if self._config is None:
                    return False
                opening = self._opens.take()
                planned = plan_offers(self._routing_settings(), self._link.routing_view(self.config.members),
                                      [*self._txs.values(), *(pending.state for pending in opening)], utcnow())
                if not planned:
                    if opening:
                        await self._commit_pass(opening, [])
                    return False
                epoch, version = self._epoch, self.config.config_version
            # Holds reserve the agents' capacity; an agent arbitrates between inboxes offering at once.
            answers = await asyncio.gather(*(self._link.call(p.user_id, "hold", p.offer) for p in planned))
            async with self._lock:
                return await self._commit_held(opening, planned, answers, epoch, version)
        finally:
            # A pass that did not commit its new conversations leaves them to the next one (their messages are still
            # unattached); one reloaded meanwhile has dropped them with the rest of its memory.
            if self._opens.put_back(opening):
                asyncio.get_running_loop().call_later(RETRY_OPENING_S, self.request_routing)

    async def _commit_held(self, opening: list[PendingOpen], planned: list[PlannedOffer],
                           answers: list[dict[str, Any] | None], epoch: int, version: int) -> bool:
        """The agents answered the pass's holds (lock held): commit the new conversations and the offers still
        valid, release the others. True when another pass is wanted."""
        if not self._activated or self._epoch != epoch:
            opening = []  # reloaded meanwhile: the new activation found the new conversations' messages in the store
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
            if self._busy_for_longest_idle(answer["snapshot"]):
                # Taken on a conversation meanwhile (another inbox's, not pushed here: `actors.agent_presence`):
                # Longest Idle offers to idle agents only.
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
                again = True
                continue
            if (not self._activated or self._epoch != epoch or self._config is None
                    or self.config.config_version != version
                    or (plan.waiting.id > 0 and self._txs.get(plan.waiting.id) != plan.waiting)):
                # The conversation moved on while the agents were asked (closed, transferred, reloaded).
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
                again = True
                continue
            held.append(plan)
        if (held or opening) and self._config is not None:
            await self._commit_pass(opening, held)
        return again

    def _busy_for_longest_idle(self, snapshot: dict[str, Any]) -> bool:
        return self._config is not None and orders_by_idle(self.config.mode) and int(snapshot["active_count"]) > 0

    async def _commit_pass(self, opening: list[PendingOpen], held: list[PlannedOffer]) -> None:
        """One step for the whole pass (lock held): every new conversation with its messages, every held offer with
        its audit event and its agent's stream event, and the rotation pointer."""
        now = utcnow()
        pointer = held[-1].rotation_pointer if held else None
        new_pointer = pointer is not None and pointer != self.config.rotation_pointer
        inbox_id, org_id = self.inbox_id, self.org_id
        offer_of = {plan.waiting.id: plan for plan in held}
        # Read here, under the lock: a message that joined a conversation while its offer was held is attached too.
        to_open = [(pending.row, offer_of[pending.state.id].offered if pending.state.id in offer_of else pending.state,
                    pending.state, pending.messages[0]["customer_ids"], [m["id"] for m in pending.messages])
                   for pending in opening]

        def row_id(plan: PlannedOffer, ids: dict[int, int]) -> int:
            # The conversation's id: the row the commit inserted for one it opened, else its own.
            return ids.get(plan.waiting.id, plan.waiting.id)

        def shown(plan: PlannedOffer, ids: dict[int, int]) -> dict[str, Any]:
            """The offer as its agent is shown it: with its conversation's id."""
            return {**plan.offer, "transaction_id": row_id(plan, ids)}

        def statements(connection: Connection) -> tuple[dict[int, int], set[int], Told]:
            ids: dict[int, int] = {}  # provisional id -> the row's
            stale: set[int] = set()  # provisional ids of those whose messages or customer changed meanwhile
            events: list[dict[str, Any]] = []  # the audit trail's rows, written together
            for row, state, queued, customer_ids, message_ids in to_open:
                if not openings.still_to_open(connection, inbox_id, customer_ids, message_ids):
                    stale.add(queued.id)
                    continue
                tx_id = repo.insert_transaction(connection, {**row, **state.columns(now)})
                ids[queued.id] = tx_id
                events.append(repo.transaction_event(tx_id, "queued", None, queued.waiting_since,
                                                     customer=queued.customer_id))
                repo.attach_messages(connection, tx_id, message_ids)
            kept = [plan for plan in held if plan.waiting.id not in stale]
            for plan in kept:
                if plan.waiting.id not in ids:
                    repo.save_transaction(connection, plan.waiting.id, plan.offered.columns(now))
                events.append(repo.transaction_event(row_id(plan, ids), "offered", plan.user_id, now, **plan.detail))
            repo.add_transaction_events(connection, events)
            # Each agent's stream shows its offer from this commit: the agent writes nothing for it, and is told it.
            return ids, stale, streams.append_to_streams(connection, org_id, [
                (plan.user_id, "offer", shown(plan, ids)) for plan in kept], now)

        try:
            # The pointer is written with the fence, on the inbox's row.
            ids, stale, told = await self._write(statements, rotation_pointer=pointer if new_pointer else None)
        except BaseException:
            for plan in held:
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
            raise
        self._opens.landed(opening)
        stale_opens = [pending for pending in opening if pending.state.id in stale]
        for plan in held:
            if plan.waiting.id in stale:
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
        held = [plan for plan in held if plan.waiting.id not in stale]
        opening = [pending for pending in opening if pending.state.id not in stale]
        for pending in opening:
            tx_id = ids[pending.state.id]
            self._remember(replace(pending.state, id=tx_id, customer=pending.customer,
                                   waited=tuple(pending.messages[1:])))
            inbox_metrics.routed(self.org_id, self.inbox_id, len(pending.messages))
        if pointer is not None:
            self.config.rotation_pointer = pointer
        for plan in held:
            tx_id = row_id(plan, ids)
            waiting = self._txs[tx_id]
            # Stamped with the commit's time, as the row's updated_at: the same after a reload. What came while the
            # agent was asked (the customer's newest identity, their messages) is the conversation's as memory has it.
            offered = replace(plan.offered, id=tx_id, offered_at=now, customer=waiting.customer,
                              messages_known=waiting.messages_known, waited=waiting.waited)
            self._remember(offered)
            self._arm_timer(offered)
            self._link.tell(plan.user_id, "publish", shown(plan, ids), streams.told_to(told, plan.user_id))
            inbox_metrics.offer_made(self.org_id, self.inbox_id, waiting, offered)
        if stale_opens:
            await self._reread_stale(stale_opens)

    async def _reread_stale(self, opens: list[PendingOpen]) -> None:
        """Conversations the pass did not open because what their forward said no longer holds (a message attached
        meanwhile, by a retried forward's earlier copy; its customer merged since; their offers were withdrawn):
        their messages go through the step that reads the store (lock held), which opens what is still to open."""
        try:
            await self._ingest_page([m["id"] for pending in opens for m in pending.messages])
        except ownership.Fenced:
            raise
        except Exception:
            # Still unattached in the store: the gateways' sweep has the inbox take them (`actors.inbox_sweep`).
            log.exception("inbox %s could not read again the messages of conversations it did not open",
                          self.inbox_id)
        self.request_routing()

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
                except ownership.Fenced:
                    self._fenced()
                except Exception:
                    log.exception("routing pass failed for inbox %s", self.inbox_id)

        self._routing_requested = asyncio.ensure_future(run())
