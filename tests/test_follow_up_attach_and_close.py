"""On PostgreSQL a follow-up is attached to its conversation by one statement that share-locks the conversation's
row: a close that holds the row when the follow-up comes is waited for, and its outcome decides. Closed, the
follow-up is not attached (it opens the customer's next conversation); rolled back, it joins the conversation its
agent still holds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from gateway.intake import IntakeResult, store_delivery
from meta.simulator import payloads
from meta.webhook_parser import parse_webhook
from store.db import Database
from store.tables import InboundMessage, Inbox
from tests.test_close_while_delivering import _conversation, _store_url


@pytest.mark.parametrize("close_commits", [True, False])
def test_a_follow_up_waits_for_a_close_holding_its_conversation_and_follows_its_outcome(
        tmp_path: Path, close_commits: bool, request: pytest.FixtureRequest) -> None:
    url = _store_url("postgres", tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=2)
        org_id, user_id, inbox_id, _, tx_id = await _conversation(db)
        async with db.session() as session:
            number = await session.scalar(select(Inbox.phone_number_id).where(Inbox.id == inbox_id))
        parsed: Any = parse_webhook(payloads.inbound_message("waba", number, "15550001", "15550001111", "Carla",
                                                             body="still there?"))
        async with db.engine.connect() as closing:
            # A close under way: the conversation's row locked and written, not yet committed.
            await closing.execute(text("SELECT id FROM transactions WHERE id = :tx FOR UPDATE"), {"tx": tx_id})
            await closing.execute(text("UPDATE transactions SET state = 'closed' WHERE id = :tx"), {"tx": tx_id})

            async def deliver() -> IntakeResult:
                async with db.session() as session:
                    return await store_delivery(session, org_id, parsed)

            delivery = asyncio.ensure_future(deliver())
            await asyncio.sleep(1.0)
            assert not delivery.done()  # the follow-up waits for the close
            await (closing.commit() if close_commits else closing.rollback())
            result = await asyncio.wait_for(delivery, 30)
        async with db.session() as session:
            attached_to = await session.scalar(select(InboundMessage.transaction_id).where(
                InboundMessage.wamid == parsed.messages[0].wamid))
        if close_commits:
            # Not the closed conversation's: its inbox gets it to open the customer's next one.
            assert attached_to is None and result.agents_shown == set()
            ((opening,),) = result.new_messages.values()
            assert opening.transaction_id is None and opening.opening is not None
        else:
            # The agent still holds the conversation: the follow-up is its, shown to the agent.
            assert attached_to == tx_id
            assert result.new_messages == {} and result.agents_shown == {(org_id, user_id)}
        await db.dispose()

    asyncio.run(run())
