"""What an inbox is told: an agent's presence or capacity changed, an agent withdrew from an offer it held, the
inbox's configuration was edited, a gateway's sweep of the store found something (a newer configuration or owner,
a message no forward brought). Each is a hint the inbox could also find for itself (the agents' answers, the next
sweep), so each is safe to repeat or to lose."""

from __future__ import annotations

from typing import Any

from actors.inbox_core import InboxCore, ownership, repo
from routing import orders_by_idle


class InboxEvents(InboxCore):
    """Agents' and configuration changes, applied live: queued and offered work is kept."""

    async def agent_changed(self, snapshot: dict[str, Any]) -> bool:
        """An agent of this inbox changed presence or capacity: refresh it and route what waits.

        A push that only repeats what an answer of the agent already told us is no new event.
        Snapshots carry (epoch, sequence): an older one that overtakes a newer one is ignored.
        The answer: whether this inbox (still) counts the agent among its members. An agent told no reads
        the inboxes it serves again (it left this one, or the inbox is gone), so it caches that list for long.
        """
        if not await self._ensure_active() or self._config is None:
            return False
        if self._link.update(snapshot):
            self.request_routing()
        return snapshot["user_id"] in self._config.members

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
                except ownership.Fenced:
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
                except ownership.Fenced:
                    self._fenced()
        return {"inbox_id": self.inbox_id, "exists": self._config is not None, "open": len(self._txs)}

    async def _reload_config(self) -> None:
        """Reload the configuration (lock held); offers to agents no longer in the inbox are rescinded."""
        async with self.db.session() as session:
            config = await ownership.load_inbox_config(session, self.inbox_id)
            if config is None:
                return
            agents = await repo.load_agent_snapshots(session, config.members)
        before = self._config
        joined = set(config.members) - set(before.members if before is not None else ())
        # Agents push how long they have been idle only to inboxes whose mode orders by it
        # (`actors.agent_presence.must_hear`): an inbox that now does knows no member's idle time for sure.
        now_idle_ordered = (before is not None and orders_by_idle(config.mode)
                            and not orders_by_idle(before.mode))
        self._config_stale = False
        self._config = config
        self._link.load(frozenset(config.members), agents)
        for user_id in config.members if now_idle_ordered else joined:
            # A new member at work pushes its snapshots here from now on (it caches the inboxes it serves, and their
            # modes), and its answer is its snapshot; an offline one is left asleep and reads them when it next
            # starts or changes presence.
            if self._link.status_of(user_id) not in (None, "offline"):
                self._link.tell(user_id, "resync")
        for tx in list(self._txs.values()):
            membership = config.members.get(tx.offered_to) if tx.offered_to is not None else None
            if tx.state == "offered" and (membership is None or not membership[1]):
                await self._end_offer(tx, "rescinded", count_as_tried=False, reason="agent left the inbox")

    async def store_watched(self, config_version: int, owner_epoch: int, unattached: bool) -> dict[str, Any]:
        """What a gateway's sweep of the store found (`actors.inbox_sweep`): the inbox's configuration version, its
        owner's epoch, and whether a message stayed unattached. Safe to repeat; a value older than this actor's own
        (read before its activation or reload) changes nothing."""
        if not await self._ensure_active() or self._config is None:
            return {"inbox_id": self.inbox_id, "exists": False}
        if owner_epoch > self._epoch:
            self._fenced()  # a newer activation owns the inbox: take it back from the store
        elif config_version > self.config.config_version or unattached or self._config_stale:
            if config_version > self.config.config_version:
                self._config_stale = True
            if not unattached or await self._attach_unattached():
                self.request_routing()  # a stale configuration is reloaded by the pass
        return {"inbox_id": self.inbox_id, "exists": True, "epoch": self._epoch}

    async def _attach_unattached(self) -> bool:
        """Messages no forward brought, read and attached (the lock taken); False when the inbox is reloading."""
        async with self._lock:
            if not self._activated:
                return False
            try:
                await self._ingest_stored()
            except ownership.Fenced:
                self._fenced()
                return False
        return True
