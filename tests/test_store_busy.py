"""Every connection of the gateway's pool busy (overload, a slow store): a request that cannot get one in time is
answered 503 with Retry-After, never 500, whether it fails in a route, in the authentication that runs before
the routes or in an agent's event-stream handshake; what was answered 200 is stored, once. Likewise a delivery whose
customer another transaction keeps locked past the gateway's lock wait."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from meta.simulator.webhook_sender import WebhookSender
from store.customers import identifier_lock_key
from tests.support import Gateway, org_with_waba, query_db, text_from, unique

# One connection kept and one more while steps overlap; a request waits this long for either.
POOL_TIMEOUT_S = 0.5
BUSY = {"detail": "store busy: no connection was free in time; retry shortly"}
LOCKED = {"detail": "store busy: what this request needs is being written by another; retry shortly"}


async def _advisory_waiters(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))


def _workspace_refusal(gateway: Gateway, org_id: int, user_id: int, token: str) -> tuple[int, Any, str]:
    """(status, JSON body, Retry-After) of the HTTP answer refusing an agent's event-stream handshake."""
    url = gateway.url.replace("http://", "ws://") + f"/v1/orgs/{org_id}/agents/{user_id}/events"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30).close()
    answer = refused.value.response
    return answer.status_code, json.loads(answer.body or b"null"), answer.headers.get("Retry-After", "")


def test_requests_finding_every_store_connection_busy_are_answered_503_and_nothing_answered_200_is_lost(
        start_pg_gateway: Callable[..., Gateway]) -> None:
    # The held deliveries wait for their customer as long as the test holds it (no lock wait bound: below).
    gateway = start_pg_gateway(store_pool_size=1, store_pool_timeout_s=POOL_TIMEOUT_S, store_lock_wait_s=0)
    org = org_with_waba(gateway)
    _, member_token = org.add_user("member")  # never used yet: its first request reads the store
    watcher_id, watcher_token = org.add_user("member")  # likewise, for its workspace's event stream
    sender = WebhookSender(f"{gateway.url}/webhooks/whatsapp/{org.id}", org.app_secret, timeout_s=60)
    held_customer, other_customer = "15550100001", "15550100002"
    slow = [text_from(org, 0, held_customer, f"slow {i}") for i in range(2)]
    other = text_from(org, 1, other_customer, "while busy")
    wamids = [p["entry"][0]["changes"][0]["value"]["messages"][0]["id"] for p in [*slow, other]]

    async def scenario() -> None:
        locker = await asyncpg.connect(gateway.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            # The store holds the held customer's deliveries mid-transaction, each on one of the pool's connections.
            await locker.execute("SELECT pg_advisory_lock($1)", identifier_lock_key(org.id, "w", held_customer))
            # One after the other: deliveries arriving together would share a transaction (a group commit).
            held = []
            for waiting, delivery in enumerate(slow, start=1):
                held.append(asyncio.ensure_future(sender.send(delivery)))
                for _ in range(200):
                    if await _advisory_waiters(locker) == waiting:
                        break
                    await asyncio.sleep(0.05)
            assert await _advisory_waiters(locker) == 2, "both deliveries should wait for the customer's lock"

            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
                refused = await sender.send(other)
                auth = {"Authorization": f"Bearer {member_token}"}
                read = await client.get(f"/v1/orgs/{org.id}/inboxes", headers=auth)
                write = await client.post(f"/v1/orgs/{org.id}/inboxes", headers=auth,
                                          json={"name": unique("inbox"), "phone_number_id": org.numbers[1]})
                socket = await asyncio.to_thread(_workspace_refusal, gateway, org.id, watcher_id, watcher_token)
            for response in (refused, read, write):
                assert response.status_code == 503, response.text
                assert response.json() == BUSY
                assert response.headers["retry-after"] == "1"
            assert socket == (503, BUSY, "1")
            assert not any(h.done() for h in held)
        finally:
            await locker.execute("SELECT pg_advisory_unlock_all()")
            await locker.close()
        assert [(await h).status_code for h in held] == [200, 200]
        # Meta redelivers what was refused; the member's requests go through once a connection is free.
        assert (await sender.send(other)).status_code == 200
        await sender.aclose()

    asyncio.run(scenario())
    assert gateway.call("GET", f"/v1/orgs/{org.id}/inboxes", member_token).status_code == 200
    stored = query_db(gateway, "SELECT wamid, count(*) FROM inbound_messages WHERE org_id = :org GROUP BY wamid",
                      org=org.id)
    assert sorted(stored) == sorted((wamid, 1) for wamid in wamids)


def test_a_delivery_whose_customer_stays_locked_past_the_lock_wait_is_answered_503_and_stored_once_redelivered(
        start_pg_gateway: Callable[..., Gateway]) -> None:
    """A delivery for a customer whose other delivery is still being written waits at most the gateway's lock wait
    (`WA_ROUTER_STORE_LOCK_WAIT_S`), then is answered 503 with Retry-After, nothing of it written; other customers'
    deliveries are stored meanwhile, and the redelivery is stored once."""
    gateway = start_pg_gateway(store_lock_wait_s=1.0)
    org = org_with_waba(gateway)
    sender = WebhookSender(f"{gateway.url}/webhooks/whatsapp/{org.id}", org.app_secret, timeout_s=60)
    held_customer, other_customer = "15550100011", "15550100012"
    delivery = text_from(org, 0, held_customer, "while its customer is written")
    other = text_from(org, 1, other_customer, "meanwhile")
    wamids = [p["entry"][0]["changes"][0]["value"]["messages"][0]["id"] for p in (delivery, other)]

    async def scenario() -> None:
        locker = await asyncpg.connect(gateway.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            # Another transaction writing the held customer (unbounded: it is released only after the answer).
            await locker.execute("SELECT pg_advisory_lock($1)", identifier_lock_key(org.id, "w", held_customer))
            waiting = asyncio.ensure_future(sender.send(delivery))
            for _ in range(200):
                if await _advisory_waiters(locker) == 1 or waiting.done():
                    break
                await asyncio.sleep(0.02)
            served = await sender.send(other)  # its own transaction: another customer
            assert served.status_code == 200, served.text
            refused = await waiting
            assert refused.status_code == 503, refused.text
            assert refused.json() == LOCKED
            assert refused.headers["retry-after"] == "1"
            assert await locker.fetchval("SELECT count(*) FROM inbound_messages WHERE wamid = $1", wamids[0]) == 0
        finally:
            await locker.execute("SELECT pg_advisory_unlock_all()")
            await locker.close()
        redelivered = await sender.send(delivery)  # Meta's redelivery
        assert redelivered.status_code == 200 and redelivered.json()["messages"] == 1, redelivered.text
        await sender.aclose()

    asyncio.run(scenario())
    stored = query_db(gateway, "SELECT wamid, count(*) FROM inbound_messages WHERE org_id = :org GROUP BY wamid",
                      org=org.id)
    assert sorted(stored) == sorted((wamid, 1) for wamid in wamids)
