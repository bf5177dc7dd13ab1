"""`resolve_customers` against a real store: what it answers is what the store holds afterwards.

Intake answers the customer of each message without reading the rows back when a delivery changed
no row but its own (the common case: a known customer writes again). Random deliveries over a small
pool of BSUIDs and numbers (numbers moving between people, customers merging, several identities in
one delivery) check that this answer always equals the store's, and that the linking invariants hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from store.customers import CustomerRef, Identity, resolve_customers
from store.db import Database
from store.migrate import upgrade_to_head
from store.tables import Customer, Organization
from tests.examples import examples

USER_IDS = ["US.1001", "US.1002", "US.1003"]
NUMBERS = ["4915000001", "4915000002", "4915000003"]

identities = st.builds(
    Identity,
    user_id=st.sampled_from([None, *USER_IDS]),
    wa_id=st.sampled_from([None, *NUMBERS]),
    username=st.sampled_from([None, "ana", "bo"]),
    name=st.sampled_from([None, "Ana", "Bo"]),
    previous_user_id=st.sampled_from([None, None, None, *USER_IDS]),
    previous_wa_id=st.sampled_from([None, None, None, *NUMBERS]),
)
deliveries = st.lists(st.lists(identities, min_size=1, max_size=3), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("customers") / "store.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_to_head(url)
    yield url


async def _run(url: str, history: list[list[Identity]]) -> None:
    db = Database(url, pool_size=1)
    try:
        async with db.session() as session:
            org = Organization(name="resolution", webhook_verify_token="t")
            session.add(org)
            await session.flush()
            org_id = org.id
        for delivery in history:
            async with db.session() as session:
                answered = await resolve_customers(session, org_id, delivery)
            async with db.session() as session:
                stored = {row.id: CustomerRef.of(row) for row in (await session.scalars(
                    select(Customer).where(Customer.org_id == org_id, Customer.merged_into.is_(None)))).all()}
                for identity, ref in zip(delivery, answered, strict=True):
                    if not identity.known:
                        assert ref is None
                        continue
                    assert ref is not None
                    assert stored.get(ref.id) == ref, (identity, ref, stored)
                # A BSUID or a number names at most one live customer.
                for column in (Customer.user_id, Customer.wa_id):
                    most = await session.scalar(select(func.count()).where(
                        Customer.org_id == org_id, Customer.merged_into.is_(None), column.is_not(None))
                        .group_by(column).order_by(func.count().desc()).limit(1))
                    assert (most or 0) <= 1
    finally:
        await db.dispose()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=deliveries)
def test_the_customer_answered_for_each_identity_is_the_one_stored(database_url: str,
                                                                    history: list[list[Identity]]) -> None:
    asyncio.run(_run(database_url, history))


def test_a_number_taken_by_another_person_in_the_same_delivery_is_answered_as_stored(database_url: str) -> None:
    # The first identity leaves its row unchanged; the second takes its number away in the same delivery.
    first = Identity(user_id="US.2001", wa_id="4916000001", name="Old owner")
    second = Identity(user_id="US.2002", wa_id="4916000001", name="New owner")
    asyncio.run(_run(database_url, [[first], [first, second]]))
