"""Which inbox holds each conversation, as this gateway last learnt it: an action on a conversation goes to its
inbox's actor without reading the conversation first.

A conversation never changes organization or inbox (a transfer moves it between agents of its inbox), so an
entry never goes stale. Entries come from what the gateway read (an action's own read) and from the events it
relays to agents' workspaces (an offer names its conversation and inbox, so the accept that follows reads
nothing). The oldest are forgotten past a bound: a forgotten one is read again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

# Far more than the conversations open at once in a large contact center (an entry serves from offer to close).
_MAX_ENTRIES = 20_000


class ConversationPlaces:
    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        # transaction id -> (organization id, inbox id), least recently learnt first.
        self._places: OrderedDict[int, tuple[int, int]] = OrderedDict()

    def learn(self, org_id: int, tx_id: int, inbox_id: int) -> None:
        self._places[tx_id] = (org_id, inbox_id)
        self._places.move_to_end(tx_id)
        while len(self._places) > self._max_entries:
            self._places.popitem(last=False)

    def learn_from_event(self, org_id: int, event: dict[str, Any]) -> None:
        """What an agent's stream event says of its conversation's place (offers, assignments, transfers)."""
        tx_id, inbox_id = event.get("transaction_id"), event.get("inbox_id")
        if isinstance(tx_id, int) and isinstance(inbox_id, int):
            self.learn(org_id, tx_id, inbox_id)

    def inbox_of(self, org_id: int, tx_id: int) -> int | None:
        """The conversation's inbox when it is known to be one of `org_id`'s; None otherwise (read it)."""
        place = self._places.get(tx_id)
        return place[1] if place is not None and place[0] == org_id else None
