"""Conversations an inbox opens with its next routing pass: opened, and offered when an agent holds the offer, in
that pass's one store transaction.

Pure (no Ray, no store). Until that commit a conversation has no row, so no id: it is planned under a provisional
negative one, which the commit replaces with its row's. Its messages stay unattached in the store meanwhile, where a
restarted inbox finds them again. A message of the same customer that comes meanwhile joins it, so a customer never
gets two conversations: while the pass asks its agents (`in_flight`), a joining message is still attached by the
pass's commit, which reads the messages under the inbox's lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from actors.transaction_state import TxState


@dataclass
class PendingOpen:
    """A conversation to open: its queued state (provisional id), its row's other columns and its messages."""

    state: TxState
    row: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    def join(self, message: dict[str, Any]) -> bool:
        """Add a message (once: a redelivered forward or a control pass may bring it again); True if new."""
        if any(m["id"] == message["id"] for m in self.messages):
            return False
        self.messages.append(message)
        return True

    @property
    def customer(self) -> dict[str, Any]:
        """The customer as their newest message shows them."""
        return dict(self.messages[-1]["customer"])


class PendingOpens:
    """The conversations waiting for a routing pass (`waiting`) and those a pass is opening (`in_flight`)."""

    def __init__(self) -> None:
        self._waiting: dict[int, PendingOpen] = {}
        self._in_flight: dict[int, PendingOpen] = {}
        self._last_id = 0

    def of(self, customer_ids: Iterable[int]) -> PendingOpen | None:
        """The conversation being opened for any of these customer ids (a merged customer's aliases)."""
        for customer_id in customer_ids:
            pending = self._waiting.get(customer_id) or self._in_flight.get(customer_id)
            if pending is not None:
                return pending
        return None

    def customers(self) -> frozenset[int]:
        return frozenset(self._waiting) | frozenset(self._in_flight)

    def add(self, org_id: int, inbox_id: int, first: dict[str, Any], sticky_agent: int | None,
            now: datetime) -> PendingOpen:
        """A new conversation for the customer of `first`, its first message."""
        self._last_id -= 1
        customer_id = int(first["customer_id"])
        customer = first["customer"]
        state = TxState(id=self._last_id, customer_id=customer_id, state="queued", waiting_since=now,
                        sticky_agent=sticky_agent, first_message=first, customer=customer, messages_known=True,
                        created_at=now)
        row = {"org_id": org_id, "inbox_id": inbox_id, "customer_id": customer_id,
               "customer_wa_id": customer.get("wa_id"), "customer_name": customer.get("name"), "created_at": now}
        pending = PendingOpen(state=state, row=row, messages=[first])
        self._waiting[customer_id] = pending
        return pending

    def take_in(self, org_id: int, inbox_id: int, message: dict[str, Any], sticky_agent: int | None,
                now: datetime) -> tuple[int, int]:
        """A message of a customer with no open conversation: it joins the one being opened for any of its customer
        ids, or starts one. (messages joining, conversations to open): (1, 1) started, (1, 0) joined, (0, 0)
        joined already (a redelivered forward)."""
        pending = self.of(message["customer_ids"])
        if pending is None:
            self.add(org_id, inbox_id, message, sticky_agent, now)
            return 1, 1
        return int(pending.join(message)), 0

    def take(self) -> list[PendingOpen]:
        """The waiting conversations, now in flight with the pass that takes them."""
        taken = list(self._waiting.values())
        self._in_flight.update(self._waiting)
        self._waiting = {}
        return taken

    def landed(self, opens: Iterable[PendingOpen]) -> None:
        """Their pass committed them: each is an open conversation now."""
        for pending in opens:
            self._in_flight.pop(pending.state.customer_id, None)

    def put_back(self, opens: Iterable[PendingOpen]) -> int:
        """Those of them their pass did not commit: the next one takes them again. How many."""
        back = 0
        for pending in opens:
            if self._in_flight.get(pending.state.customer_id) is pending:
                self._waiting[pending.state.customer_id] = self._in_flight.pop(pending.state.customer_id)
                back += 1
        return back

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
