"""An inbox's routing pass: the offers planned as data (`actors.offer_plan`), held, then committed together."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from actors import inbox_metrics
from actors.inbox_core import InboxCore, log, repo, streams
from actors.offer_plan import PlannedOffer, RoutingSettings, plan_offers
from routing import AssignmentMode
from store.clock import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Connection


class InboxRouting(InboxCore):
    """Offers the waiting conversations: no agent's answer is awaited under the inbox's lock."""

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
        inbox_id, org_id = self.inbox_id, self.org_id

        def statements(connection: Connection) -> None:
            for plan in held:
                repo.save_transaction(connection, plan.offered.id, plan.offered.columns(now))
                repo.add_transaction_event(connection, plan.offered.id, "offered", plan.user_id, now, **plan.detail)
            if new_pointer:
                repo.save_rotation_pointer(connection, inbox_id, pointer)
            # Each agent's stream shows its offer from this commit: the agent writes nothing for it.
            streams.append_to_streams(connection, org_id, [(plan.user_id, "offer", plan.offer) for plan in held], now)

        try:
            await self._write(statements)
        except BaseException:
            for plan in held:
                self._link.tell(plan.user_id, "release", plan.offer_id, "rescinded")
            raise
        if pointer is not None:
            self.config.rotation_pointer = pointer
        for plan in held:
            offered = replace(plan.offered, offered_at=now)  # as the row's updated_at: the same after a reload
            self._remember(offered)
            self._arm_timer(offered)
            self._link.tell(plan.user_id, "publish", plan.offer)
            inbox_metrics.offer_made(self.org_id, self.inbox_id, plan.waiting, offered)

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
