"""A gateway's sweep of the store for its inboxes' actors: one read a pass for the whole deployment, not one per inbox.

Each pass reads every inbox's configuration version, owner epoch and oldest unattached message
(`store.inbox_ownership.inboxes_watched`). An inbox's actor is told only what it may not know: a version or epoch other
than the one this gateway last told it (a configuration change whose notification was lost, a newer owner), or a
message that stayed unattached from one pass to the next (a forward lost with its gateway). A message being forwarded
right now is not one: the next pass no longer finds it. Every inbox is told once after the gateway starts, since a
gateway that died may have left any of them a notification short. A configuration or owner is told only to an actor
that runs (one that starts reads both from the store); an unattached message starts the inbox's actor if none runs.

Pure (no Ray, no store): `actors.routing_client.RoutingClient` reads the rows and makes the calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboxWatched:
    """One inbox as a pass read it."""

    org_id: int
    inbox_id: int
    config_version: int
    owner_epoch: int
    # The id of its oldest message no conversation holds yet, or None.
    oldest_unattached: int | None


@dataclass(frozen=True, slots=True)
class InboxTold:
    """What an inbox's actor is told after a pass (`InboxActor.store_watched`)."""

    org_id: int
    inbox_id: int
    config_version: int
    owner_epoch: int
    # Messages no forward brought: the inbox reads its unattached ones.
    unattached: bool


class InboxSweep:
    def __init__(self) -> None:
        # (org, inbox) -> (config version, owner epoch) as last told (the call answered).
        self._told: dict[tuple[int, int], tuple[int, int]] = {}
        # (org, inbox) -> its oldest unattached message at the previous pass.
        self._unattached: dict[tuple[int, int], int] = {}

    def due(self, watched: Iterable[InboxWatched]) -> list[InboxTold]:
        """The inboxes to tell after a pass that read `watched` (every inbox of the store)."""
        due: list[InboxTold] = []
        unattached: dict[tuple[int, int], int] = {}
        seen: set[tuple[int, int]] = set()
        for row in watched:
            key = (row.org_id, row.inbox_id)
            seen.add(key)
            told = self._told.get(key)
            oldest = row.oldest_unattached
            if oldest is not None:
                unattached[key] = oldest
            # Left unattached a whole pass: no forward is bringing it (a later message does not change the oldest).
            stuck = oldest is not None and self._unattached.get(key) == oldest
            if told is None:
                due.append(InboxTold(row.org_id, row.inbox_id, row.config_version, row.owner_epoch, oldest is not None))
            elif told != (row.config_version, row.owner_epoch) or stuck:
                due.append(InboxTold(row.org_id, row.inbox_id, row.config_version, row.owner_epoch, stuck))
        self._unattached = unattached
        for key in set(self._told) - seen:
            del self._told[key]  # deleted inboxes
        return due

    def told(self, told: InboxTold) -> None:
        """Its actor answered: the same version and epoch are not told again."""
        self._told[(told.org_id, told.inbox_id)] = (told.config_version, told.owner_epoch)

    def __len__(self) -> int:
        return len(self._told)
