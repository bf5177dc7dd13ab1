"""Rows of a conversation an agent holds, written straight to the store: an agent actor shows a customer message
with a conversation only while the store has it attached there (`AgentStore.deliver_and_read`)."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from store.clock import utcnow
from store.db import Database
from store.tables import Customer, InboundMessage, Inbox, PhoneNumber, Transaction


async def held_conversation(db: Database, org_id: int, user_id: int, count: int) -> tuple[int, list[int]]:
    """A customer's conversation the agent holds, with `count` messages attached: (its id, their ids). An agent
    shows a message with a conversation only while it is attached to it (`AgentStore.deliver_and_read`)."""
    now = utcnow()
    wa_id = str(uuid.uuid4().int)[:13]  # a customer of their own (the gateway's tests share one store)
    async with db.session() as session:
        number = PhoneNumber(phone_number_id=uuid.uuid4().hex[:12], waba_id="waba")
        customer = Customer(org_id=org_id, wa_id=wa_id, name="Carla")
        session.add_all([number, customer])
        await session.flush()
        inbox = Inbox(org_id=org_id, name="Sales", phone_number_id=number.phone_number_id, assignment_mode="manual")
        session.add(inbox)
        await session.flush()
        tx = Transaction(org_id=org_id, inbox_id=inbox.id, customer_id=customer.id, state="assigned",
                         agent_id=user_id, assigned_at=now, waiting_since=now, created_at=now, updated_at=now,
                         tried=[])
        session.add(tx)
        await session.flush()
        messages = [InboundMessage(org_id=org_id, wamid=f"wamid.{uuid.uuid4().hex}", waba_id="waba",
                                   inbox_id=inbox.id, transaction_id=tx.id, from_wa_id=wa_id,
                                   customer_id=customer.id, type="text", summary=f"m{n}", sent_at=now, raw={})
                    for n in range(count)]
        session.add_all(messages)
        await session.flush()
        return tx.id, [m.id for m in messages]


async def hand_on(db: Database, tx_id: int, message_ids: list[int]) -> int:
    """The conversation closes, its messages handed to the customer's next conversation, held by the same agent:
    the next one's id."""
    async with db.session() as session:
        old = await session.get(Transaction, tx_id)
        assert old is not None
        old.state, old.closed_at = "closed", utcnow()
        await session.flush()
        new = Transaction(org_id=old.org_id, inbox_id=old.inbox_id, customer_id=old.customer_id, state="assigned",
                          agent_id=old.agent_id, assigned_at=utcnow(), waiting_since=utcnow(), created_at=utcnow(),
                          updated_at=utcnow(), tried=[])
        session.add(new)
        await session.flush()
        await session.execute(update(InboundMessage).where(InboundMessage.id.in_(message_ids))
                              .values(transaction_id=new.id))
        return new.id
