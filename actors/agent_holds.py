"""An offer an agent holds for an inbox (a reservation, as in Twilio TaskRouter), and the payloads its events
carry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.agent_store_steps import StoredOffer


@dataclass
class Hold:
    offer: dict[str, Any]
    # A claim or a transfer: it takes capacity but is no "ringing" offer.
    direct: bool
    held_at: float
    published: bool = False

    @property
    def transaction_id(self) -> int:
        return int(self.offer["transaction_id"])

    @property
    def inbox_id(self) -> int:
        return int(self.offer["inbox_id"])

    @property
    def expires_at(self) -> datetime | None:
        value = self.offer.get("expires_at")
        return datetime.fromisoformat(value) if value else None


def stored_offer(offer: StoredOffer) -> dict[str, Any]:
    return {"offer_id": offer.offer_id, "transaction_id": offer.transaction_id, "inbox_id": offer.inbox_id,
            "expires_at": offer.expires_at.isoformat() if offer.expires_at else None}


def rescinded(offer: dict[str, Any], reason: str) -> dict[str, Any]:
    """An `offer_rescinded` event's payload: the offer (as held or published) is over."""
    return {"transaction_id": int(offer["transaction_id"]), "inbox_id": int(offer["inbox_id"]),
            "offer_id": offer["offer_id"], "reason": reason}
