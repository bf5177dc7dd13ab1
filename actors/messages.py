"""What the gateway hands to an inbox actor: a message already stored durably."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A newly stored inbound message, as handed to its inbox actor for routing."""

    id: int
    inbox_id: int
    wamid: str
    from_wa_id: str
    customer_name: str | None
    type: str
    summary: str
    sent_at: str
