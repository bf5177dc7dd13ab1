"""What must hold on both stores (SQLite and PostgreSQL): schema, linking, the shared-number race, intake."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx
from sqlalchemy import Column, inspect

from meta.simulator import payloads
from store.db import Database
from store.tables import Base
from tests.support import Gateway, add_simulated_waba, assert_invalid, auth, create_org, link_waba, query_db


def _inspect(gateway: Gateway, read: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        db = Database(gateway.database_url, pool_size=1)
        try:
            async with db.engine.connect() as connection:
                return await connection.run_sync(lambda sync: read(inspect(sync)))
        finally:
            await db.dispose()

    return asyncio.run(run())


def _at_once(calls: Sequence[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls in parallel threads released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_migrations_create_every_table_with_its_constraints(any_gateway: Gateway) -> None:
    def catalog_index_names(inspector: Any) -> set[str]:
        # Reflection skips expression indexes on SQLite (e.g. lower(email)): ask the catalog itself.
        query = ("SELECT name FROM sqlite_master WHERE type = 'index'" if inspector.dialect.name == "sqlite"
                 else "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
        return {row[0] for row in inspector.bind.exec_driver_sql(query)}

    def read(inspector: Any) -> dict[str, Any]:
        return {"__catalog__": catalog_index_names(inspector)} | {name: {
            "columns": {c["name"] for c in inspector.get_columns(name)},
            "unique": {u["name"] for u in inspector.get_unique_constraints(name)},
            "checks": {c["name"] for c in inspector.get_check_constraints(name)},
            "fks": {(tuple(f["constrained_columns"]), f["referred_table"]) for f in inspector.get_foreign_keys(name)},
            "indexes": {i["name"]: bool(i["unique"]) for i in inspector.get_indexes(name)},
        } for name in inspector.get_table_names()}

    schema = _inspect(any_gateway, read)
    for table in Base.metadata.sorted_tables:
        assert table.name in schema, f"table {table.name} missing"
        actual = schema[table.name]
        assert actual["columns"] == {c.name for c in table.columns}, table.name
        for constraint in table.constraints:
            kind = type(constraint).__name__
            if kind == "UniqueConstraint":
                assert constraint.name in actual["unique"], f"{table.name}: unique {constraint.name}"
            elif kind == "CheckConstraint":
                assert constraint.name in actual["checks"], f"{table.name}: check {constraint.name}"
        expected_fks = {(tuple(fk.parent.name for fk in c.elements), c.referred_table.name)
                        for c in table.foreign_key_constraints}
        assert expected_fks == actual["fks"], table.name
        for index in table.indexes:
            if not all(isinstance(expression, Column) for expression in index.expressions):
                assert index.name in schema["__catalog__"], f"{table.name}: expression index {index.name}"
                continue
            assert actual["indexes"].get(str(index.name)) == bool(index.unique), f"{table.name}: index {index.name}"
    # The constraints are live, not just declared: the store itself refuses what the API would.
    assert _inspect(any_gateway, lambda i: "uq_transactions_open_customer" in {
        x["name"] for x in i.get_indexes("transactions") if x["unique"]})


def test_link_stores_secrets_encrypted(any_gateway: Gateway) -> None:
    org = create_org(any_gateway)
    linked = link_waba(org, add_simulated_waba(any_gateway, numbers=30))
    assert len(linked["phone_numbers"]) == 30  # paging followed
    assert org.access_token not in str(linked) and org.app_secret not in str(linked)
    (token_enc, secret_enc), = query_db(
        any_gateway, "SELECT access_token_enc, app_secret_enc FROM whatsapp_accounts WHERE org_id = :o", o=org.id)
    assert org.access_token not in token_enc and org.app_secret not in secret_enc


def test_two_orgs_racing_for_a_shared_number_get_exactly_one_inbox(any_gateway: Gateway) -> None:
    # Each round is one race (both requests released together); each inbox costs an actor process.
    rounds = 5
    waba = add_simulated_waba(any_gateway, numbers=rounds)
    a, b = create_org(any_gateway), create_org(any_gateway)
    clients = [httpx.Client(base_url=any_gateway.url, timeout=30) for _ in range(2)]
    try:
        # Both organizations link the WABA at the same moment: both succeed (its numbers are shared).
        link = {"waba_id": waba[0], "access_token": waba[1], "app_secret": waba[2]}
        linked = _at_once([partial(client.post, org.path("/whatsapp/accounts"), headers=auth(org.owner_token),
                                   json=link) for client, org in zip(clients, (a, b), strict=True)])
        assert [r.status_code for r in linked] == [201, 201], [r.text for r in linked]
        for number in waba[3]:
            calls = [partial(client.post, org.path("/inboxes"), headers=auth(org.owner_token),
                             json={"name": f"Race {number}", "phone_number_id": number})
                     for client, org in zip(clients, (a, b), strict=True)]
            statuses = sorted(r.status_code for r in _at_once(calls))
            assert statuses == [201, 409], f"{number}: {statuses}"
    finally:
        for client in clients:
            client.close()
    owned = [i["phone_number_id"] for org in (a, b) for i in any_gateway.items(org.path("/inboxes"),
                                                                             org.owner_token)]
    assert sorted(owned) == sorted(waba[3])  # every number in exactly one inbox
    assert query_db(any_gateway, "SELECT count(*) FROM inboxes WHERE org_id IN (:a, :b)", a=a.id, b=b.id) == [
        (rounds,)]


def test_inbox_lifecycle_and_validation(any_gateway: Gateway) -> None:
    org = create_org(any_gateway)
    link_waba(org, add_simulated_waba(any_gateway, numbers=2))
    agent, _ = org.add_user()
    inbox = any_gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201, json={
        "name": "Sales", "phone_number_id": org.numbers[0], "assignment_mode": "sticky", "reassign_after_s": 900,
        "dials_per_agent": 100, "agents": [{"user_id": agent, "proficiency": 100}]})
    assert inbox["agents"][0]["proficiency"] == 100
    for field, value in (("reassign_after_s", 901), ("dials_per_agent", 0), ("assignment_mode", "fifo")):
        assert_invalid(any_gateway.call("POST", org.path("/inboxes"), org.owner_token,
                                        json={"name": "Bad", "phone_number_id": org.numbers[1], field: value}),
                       "body", field)
        assert_invalid(any_gateway.call("PATCH", org.path(f"/inboxes/{inbox['id']}"), org.owner_token,
                                        json={field: value}), "body", field)
    assert any_gateway.ok("GET", org.path(f"/inboxes/{inbox['id']}"), org.owner_token) == inbox
    assert len(any_gateway.items(org.path("/inboxes"), org.owner_token)) == 1
    # Revoking the WhatsApp licence takes the agent out of the inbox (a DELETE ... RETURNING on each store).
    any_gateway.ok("PATCH", org.path(f"/users/{agent}"), org.owner_token, json={"licenses": ["phone_system"]})
    assert any_gateway.ok("GET", org.path(f"/inboxes/{inbox['id']}"), org.owner_token)["agents"] == []
    any_gateway.ok("DELETE", org.path(f"/inboxes/{inbox['id']}"), org.owner_token, 204)
    assert all(n["available"] for n in any_gateway.items(org.path("/whatsapp/numbers"), org.owner_token))


def test_webhook_intake_is_idempotent_even_under_concurrent_redelivery(any_gateway: Gateway) -> None:
    org = create_org(any_gateway)
    link_waba(org, add_simulated_waba(any_gateway, numbers=1))
    body = payloads.inbound_message(org.waba_id, org.numbers[0], "+1", "15551239999", "Rita", body="hello")
    raw, headers = org.sender().prepare(body)
    clients = [httpx.Client(base_url=any_gateway.url, timeout=30) for _ in range(4)]
    try:
        responses = _at_once([partial(c.post, f"/webhooks/whatsapp/{org.id}", content=raw, headers=headers)
                              for c in clients])
    finally:
        for client in clients:
            client.close()
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert sum(r.json()["messages"] for r in responses) == 1
    assert sum(r.json()["duplicate_messages"] for r in responses) == 3
    assert query_db(any_gateway, "SELECT count(*) FROM inbound_messages WHERE org_id = :o", o=org.id) == [(1,)]


def test_webhook_values_beyond_column_sizes_are_stored_not_refused(any_gateway: Gateway) -> None:
    """Meta's fields have no documented maximum; whatever is signed and accepted must be stored (PostgreSQL
    enforces VARCHAR lengths, SQLite does not), and text may even carry NUL characters."""
    org = create_org(any_gateway)
    link_waba(org, add_simulated_waba(any_gateway, numbers=1))
    customer = "1" * 80
    message = payloads.text_message(customer, "nul \x00 inside")
    message["type"] = "text_but_with_a_very_long_future_type_name_from_meta"
    message["text_but_with_a_very_long_future_type_name_from_meta"] = {"x": 1}
    body = payloads.inbound_messages(org.waba_id, org.numbers[0], "+1", [message], {customer: "N" * 400 + "\x00"})
    status = payloads.status("wamid." + "s" * 300, "2" * 80, "read")
    status["status"] = "a_status_name_longer_than_thirty_two_characters"
    body["entry"][0]["changes"].append(payloads.change(payloads.statuses_value(org.numbers[0], "+1", [status])))
    body["entry"][0]["changes"].append(payloads.template_status_update(
        org.waba_id, "1", "t" * 600, "l" * 40, "E" * 80, "reason \x00")["entry"][0]["changes"][0])
    body["entry"][0]["changes"].append(payloads.change({"v": "\x00"}, "f" * 100))
    for _ in range(2):  # and a redelivery is still recognised as one
        response = org.sender().send_sync(body)
        assert response.status_code == 200, response.text
    assert query_db(any_gateway, "SELECT count(*) FROM inbound_messages WHERE org_id = :o", o=org.id) == [(1,)]
    assert query_db(any_gateway, "SELECT count(*) FROM message_statuses WHERE org_id = :o", o=org.id) == [(1,)]
    assert query_db(any_gateway, "SELECT count(*) FROM webhook_changes WHERE org_id = :o", o=org.id) == [(2,)]
    (name,), = query_db(any_gateway, "SELECT customer_name FROM inbound_messages WHERE org_id = :o", o=org.id)
    assert name.startswith("NNNN")


def test_text_the_store_cannot_hold_is_a_named_422_not_a_crash(any_gateway: Gateway) -> None:
    org = create_org(any_gateway)
    link_waba(org, add_simulated_waba(any_gateway, numbers=1))
    users = any_gateway.items(org.path("/users"), org.owner_token)
    for field, value in (("name", "Nul\x00l"), ("email", "nul\x00@example.com")):
        body = {"name": "Ok", "email": "ok@example.com", **{field: value}}
        assert_invalid(any_gateway.call("POST", org.path("/users"), org.owner_token, json=body), "body", field)
    assert any_gateway.items(org.path("/users"), org.owner_token) == users
    for body, field in (({"name": "In\x00box", "phone_number_id": org.numbers[0]}, "name"),
                        ({"name": "Inbox", "phone_number_id": "12\x0034"}, "phone_number_id")):
        assert_invalid(any_gateway.call("POST", org.path("/inboxes"), org.owner_token, json=body), "body", field)
    assert any_gateway.items(org.path("/inboxes"), org.owner_token) == []
    for path in ("/whatsapp/accounts/12%0034", "/whatsapp/accounts/" + "9" * 300):
        assert any_gateway.call("GET", org.path(path), org.owner_token).status_code in (404, 422)


# ---- revision 0002 (customers) on a store holding data of revision 0001


_LEGACY_ROWS = [
    "INSERT INTO organizations (id, name, webhook_verify_token, created_at) VALUES (1, 'Org', 'v', CURRENT_TIMESTAMP)",
    "INSERT INTO users (id, org_id, name, email, role, licenses, created_at) "
    "VALUES (1, 1, 'Ada', 'ada@example.com', 'member', '[]', CURRENT_TIMESTAMP)",
    "INSERT INTO phone_numbers (phone_number_id, waba_id, updated_at) VALUES ('p1', 'w1', CURRENT_TIMESTAMP)",
    "INSERT INTO inboxes (id, org_id, name, type, phone_number_id, assignment_mode, reassign_after_s, "
    "dials_per_agent, created_at, updated_at) VALUES (1, 1, 'In', 'whatsapp', 'p1', 'sticky', 30, 1, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    *(f"INSERT INTO transactions (id, org_id, inbox_id, customer_wa_id, customer_name, state, offer_seq, "
      f"sticky_dials, tried, waiting_since, created_at, updated_at) VALUES ({tx}, 1, 1, '{wa}', 'N{tx}', '{state}', "
      f"0, 0, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
      for tx, wa, state in ((1, "111", "closed"), (2, "111", "queued"), (3, "", "queued"), (4, "", "closed"))),
    "INSERT INTO transaction_events (transaction_id, kind, detail, at) VALUES (1, 'closed', '{}', CURRENT_TIMESTAMP)",
    *(f"INSERT INTO inbound_messages (id, org_id, wamid, waba_id, phone_number_id, inbox_id, transaction_id, "
      f"from_wa_id, customer_name, type, summary, sent_at, received_at, raw) VALUES ({i}, 1, 'wamid.{i}', 'w1', "
      f"'p1', 1, {tx}, '{wa}', 'Name {wa}', 'text', 'hi', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{{}}')"
      for i, tx, wa in ((1, "1", "111"), (2, "3", ""), (3, "NULL", "222"))),
    "INSERT INTO sticky_agents (inbox_id, customer_wa_id, user_id, updated_at) VALUES (1, '111', 1, CURRENT_TIMESTAMP)",
]


async def _migrate_legacy_store(url: str) -> dict[str, list[tuple[Any, ...]]]:
    from alembic import command
    from sqlalchemy import text

    from store.migrate import alembic_config, upgrade_to_head

    await asyncio.to_thread(command.upgrade, alembic_config(url), "0001")
    db = Database(url, pool_size=1)
    try:
        async with db.session() as session:
            for statement in _LEGACY_ROWS:
                await session.execute(text(statement))
        await asyncio.to_thread(upgrade_to_head, url)
        queries = {
            "customers": "SELECT id, wa_id, user_id, name FROM customers ORDER BY id",
            "transactions": "SELECT id, customer_id FROM transactions ORDER BY id",
            "messages": "SELECT id, customer_id FROM inbound_messages ORDER BY id",
            "sticky": "SELECT inbox_id, customer_id, user_id FROM sticky_agents",
            "events": "SELECT transaction_id, kind FROM transaction_events",
        }
        async with db.session() as session:
            return {name: [tuple(r) for r in (await session.execute(text(sql))).all()] for name, sql in queries.items()}
    finally:
        await db.dispose()


def test_migration_0002_gives_existing_conversations_their_customers(tmp_path: Any) -> None:
    from tests.support import create_postgres_database, drop_postgres_database, postgres_database_url

    urls = [f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}"]
    pg_name = asyncio.run(create_postgres_database())
    if pg_name is not None:
        urls.append(postgres_database_url(pg_name))
    try:
        for url in urls:
            got = asyncio.run(_migrate_legacy_store(url))
            by_wa = {wa: cid for cid, wa, _user, _name in got["customers"] if wa is not None}
            assert set(by_wa) == {"111", "222"}, (url, got["customers"])
            names = {cid: name for cid, _wa, _user, name in got["customers"]}
            assert names[by_wa["111"]] == "Name 111"
            tx_customer = dict(got["transactions"])
            assert tx_customer[1] == tx_customer[2] == by_wa["111"]
            # The two conversations stored under the empty wa_id were strangers: a customer each.
            assert len({tx_customer[3], tx_customer[4], by_wa["111"], by_wa["222"]}) == 4
            assert dict(got["messages"]) == {1: by_wa["111"], 2: tx_customer[3], 3: by_wa["222"]}
            assert got["sticky"] == [(1, by_wa["111"], 1)]
            assert got["events"] == [(1, "closed")]  # rebuilding the tables cascaded nothing away
    finally:
        if pg_name is not None:
            asyncio.run(drop_postgres_database(pg_name))
