"""What the gateway hands to an inbox actor: a message already stored durably."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A newly stored inbound message, as handed to its inbox actor for routing."""

    id: int
    inbox_id: int
    wamid: str
    from_wa_id: str
    from_user_id: str | None
    customer_name: str | None
    type: str
    summary: str
    sent_at: str
    # The customer (see store/customers.py): conversations are keyed by this id, not by a number.
    customer_id: int
    # {id, user_id, wa_id, username, name}
    customer: dict[str, Any]
    # Attached at intake to the conversation an agent holds (`store.routing_repo.attach_to_assigned`); None: the
    # inbox attaches it.
    transaction_id: int | None = None
    # Attached at intake: (the agent, its `message` event as the intake's commit stored it on the agent's stream,
    # a `store.agent_store_steps.LinkedEvent`), told to the agent so it need not read its stream.
    shown_as: tuple[int, tuple[int, int, str, dict[str, Any], str]] | None = None
    # Not attached at intake: what the inbox needs to open the customer's conversation without reading the store,
    # read in the intake's transaction (`store.conversation_openings`): {"customer_ids": the customer, then those
    # merged into it; "sticky_agent": its sticky agent on the inbox or None}.
    opening: dict[str, Any] | None = None
