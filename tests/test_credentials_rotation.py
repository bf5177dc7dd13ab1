"""`PUT .../whatsapp/accounts/{waba}/credentials`: a new access token (verified with Meta) and app secret;
senders switch to the new token, the replaced secret verifies deliveries for a grace period only."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import text

from meta.signature import HEADER, sign
from store.db import Database
from tests.messaging_support import connect_callback, converse, deliveries, reply, wait_states
from tests.routing_support import Scenario, customer_id
from tests.support import Gateway, assert_invalid, text_from, unique


def _end_grace(gateway: Gateway, org_id: int) -> None:
    async def run() -> None:
        db = Database(gateway.database_url, pool_size=1)
        try:
            async with db.session() as session:
                await session.execute(text("UPDATE whatsapp_accounts SET previous_app_secret_until = :past "
                                           "WHERE org_id = :o"), {"past": "2000-01-01 00:00:00.000000", "o": org_id})
        finally:
            await db.dispose()

    asyncio.run(run())


def _deliver(sc: Scenario, secret: str) -> int:
    body = json.dumps(text_from(sc.org, 0, customer_id(), "signed")).encode()
    return sc.gateway.http.post(f"/webhooks/whatsapp/{sc.org.id}", content=body,
                                headers={"Content-Type": "application/json", HEADER: sign(body, secret)}).status_code


def test_rotated_credentials_apply_and_the_old_secret_keeps_a_grace_period(sc: Scenario) -> None:
    connect_callback(sc)
    deliveries(sc)
    (agent,) = sc.agents(1)
    sc.inbox([agent])
    socket = sc.socket(agent)
    tx_id = converse(sc, agent, socket, customer_id(), "hello")
    reply(sc, agent, tx_id, "first")  # the number's sender now holds the current token
    wait_states(sc, tx_id, {"read"}, count=1)
    path = sc.org.path(f"/whatsapp/accounts/{sc.org.waba_id}/credentials")
    old_token, old_secret = sc.org.access_token, sc.org.app_secret
    new_token, new_secret = unique("EAAG"), unique("secret")

    # A token Meta refuses changes nothing.
    refused = sc.gateway.call("PUT", path, sc.owner, json={"access_token": "EAAG-unknown", "app_secret": new_secret})
    assert_invalid(refused, "body", "access_token")
    assert _deliver(sc, new_secret) == 403 and _deliver(sc, old_secret) == 200

    simulator = sc.gateway.simulator
    simulator.grant_token(new_token, sc.org.waba_id)
    rotated = sc.gateway.ok("PUT", path, sc.owner, json={"access_token": new_token, "app_secret": new_secret})
    assert rotated["waba_id"] == sc.org.waba_id and new_token not in json.dumps(rotated)
    simulator.revoke_token(old_token)
    simulator.wabas[sc.org.waba_id].app_secret = new_secret  # Meta signs with the new secret from now on

    # The sender uses the new token (the old one is revoked at Meta); statuses come signed with the new secret.
    reply(sc, agent, tx_id, "second")
    wait_states(sc, tx_id, {"read"}, count=2)
    # Deliveries signed before the change (retried by Meta) are still accepted during the grace period.
    assert _deliver(sc, new_secret) == 200 and _deliver(sc, old_secret) == 200
    _end_grace(sc.gateway, sc.org.id)
    time.sleep(5.5)  # the signing cache's TTL: the grace ended in the store, not through this gateway
    assert _deliver(sc, old_secret) == 403 and _deliver(sc, new_secret) == 200
