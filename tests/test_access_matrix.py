"""The access matrix: every route of the application x every kind of caller, with the expected answer.

The routes are read from the application itself (`app.routes`), so a route added without a row here fails
`test_every_route_has_a_row`. The organizations, users and conversations are built once for the module.

Callers (columns, in this order):
  platform   the platform admin
  owner      the organization's owner
  admin_cc   an admin holding the Contact Center licence (configures omnichannel)
  admin      an admin without it
  member     a member serving the inbox in the paths (inbox A1, conversation tx1)
  member2    a member serving another inbox of the same organization (A2)
  f_owner    another organization's owner
  f_member   another organization's member
  deleted    the token of a deleted user
  revoked    a revoked token of a live user
  none       no token at all
  malformed  a header that is not a bearer token of ours
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from config.settings import Settings
from gateway.app import create_app
from tests.support import Gateway, Org, add_simulated_waba, create_org, eventually, link_waba, text_from, unique

CALLERS = ("platform", "owner", "admin_cc", "admin", "member", "member2", "f_owner", "f_member", "deleted",
           "revoked", "none", "malformed")
UNAUTHENTICATED = ("deleted", "revoked", "none", "malformed")
FOREIGN = ("f_owner", "f_member")

# Path values: org A, its inbox A1 and conversation tx1 (served by `member`), its member as the user in
# user/agent paths. Destructive routes (DELETE) name an absent target so each cell leaves the world as it
# was: a caller allowed to act gets the target's 404, one who is not gets the refusal first.
ABSENT = 9_000_000_000

# Rows: "METHOD path" -> the expected status per caller, in CALLERS order. A row may name a body (JSON) and
# path overrides. The rows run top to bottom; the conversation actions run last, in an order whose effects
# the table shows (the member claims tx1, writes in it, then the platform admin closes it).
_WS = "WS"
# Routes that answer every caller alike, whatever the token (their status depends on the deployment only).
SAME = "same"


@dataclass(frozen=True)
class Row:
    expected: str
    body: Any = None
    path: dict[str, Any] | None = None


TABLE: dict[str, Row] = {
    # ---------------------------------------------------------------- public and machine routes
    "GET /openapi.json": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /healthz": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    # Readiness answers every caller alike (200 when ready, else 503 naming the failing checks).
    "GET /readyz": Row(SAME),
    "GET /metrics": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /style.css": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /docs": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /docs/oauth2-redirect": Row("200 200 200 200 200 200 200 200 200 200 200 200"),
    "GET /docs-assets": Row("307 307 307 307 307 307 307 307 307 307 307 307"),
    "GET /js": Row("307 307 307 307 307 307 307 307 307 307 307 307"),
    # Meta's routes: no bearer token counts; the verify token, or the delivery's signature, does.
    "GET /webhooks/whatsapp/{org_id}": Row("403 403 403 403 403 403 403 403 403 403 403 403"),
    "POST /webhooks/whatsapp/{org_id}": Row("401 401 401 401 401 401 401 401 401 401 401 401", body={}),
    # ---------------------------------------------------------------- identity, organizations, users
    "GET /v1/me": Row("200 200 200 200 200 200 200 200 401 401 401 401"),
    "POST /v1/orgs": Row("422 403 403 403 403 403 403 403 401 401 401 401", body={}),
    "GET /v1/orgs": Row("200 403 403 403 403 403 403 403 401 401 401 401"),
    "GET /v1/orgs/{org_id}": Row("200 200 200 200 200 200 404 404 401 401 401 401"),
    "PATCH /v1/orgs/{org_id}": Row("200 200 200 403 403 403 404 404 401 401 401 401",
                                   body={"missed_offers_before_away": 3}),
    "POST /v1/orgs/{org_id}/users": Row("422 422 422 422 403 403 404 404 401 401 401 401", body={}),
    "GET /v1/orgs/{org_id}/users": Row("200 200 200 200 403 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/users/{user_id}": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "PATCH /v1/orgs/{org_id}/users/{user_id}": Row("200 200 200 200 403 403 404 404 401 401 401 401", body={}),
    "DELETE /v1/orgs/{org_id}/users/{user_id}": Row("404 404 404 404 403 403 404 404 401 401 401 401",
                                                    path={"user_id": ABSENT}),
    "GET /v1/orgs/{org_id}/users/{user_id}/tokens": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/users/{user_id}/tokens": Row("201 201 201 201 201 403 404 404 401 401 401 401",
                                                         body={}),
    "DELETE /v1/orgs/{org_id}/users/{user_id}/tokens/{token_id}": Row(
        "404 404 404 404 404 403 404 404 401 401 401 401", path={"token_id": ABSENT}),
    # ---------------------------------------------------------------- WhatsApp accounts, numbers, templates
    "GET /v1/orgs/{org_id}/whatsapp/webhook": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/whatsapp/webhook/rotate": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/whatsapp/accounts": Row("422 422 422 403 403 403 404 404 401 401 401 401", body={}),
    "PUT /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/credentials": Row(
        "422 422 422 403 403 403 404 404 401 401 401 401", body={}),
    "GET /v1/orgs/{org_id}/whatsapp/accounts": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/refresh": Row(
        "200 200 200 403 403 403 404 404 401 401 401 401"),
    "DELETE /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}": Row(
        "404 404 404 403 403 403 404 404 401 401 401 401", path={"waba_id": "1999999999"}),
    "GET /v1/orgs/{org_id}/whatsapp/numbers": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "PATCH /v1/orgs/{org_id}/whatsapp/numbers/{phone_number_id}": Row(
        "200 200 200 403 403 403 404 404 401 401 401 401", body={"messages_per_second": 80}),
    "POST /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/templates": Row(
        "422 422 422 403 403 403 404 404 401 401 401 401", body={}),
    "GET /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/templates": Row(
        "200 200 200 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/templates/sync": Row(
        "200 200 200 403 403 403 404 404 401 401 401 401"),
    "DELETE /v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/templates/{name}": Row(
        "404 404 404 403 403 403 404 404 401 401 401 401"),
    # ---------------------------------------------------------------- inboxes, statistics, agents
    "GET /v1/orgs/{org_id}/inboxes/agent-candidates": Row("200 200 200 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/inboxes": Row("422 422 422 403 403 403 404 404 401 401 401 401", body={}),
    "GET /v1/orgs/{org_id}/inboxes": Row("200 200 200 200 200 200 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/inboxes/{inbox_id}": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "PATCH /v1/orgs/{org_id}/inboxes/{inbox_id}": Row("200 200 200 403 403 403 404 404 401 401 401 401", body={}),
    "DELETE /v1/orgs/{org_id}/inboxes/{inbox_id}": Row("404 404 404 403 403 403 404 404 401 401 401 401",
                                                       path={"inbox_id": ABSENT}),
    "GET /v1/orgs/{org_id}/inboxes/{inbox_id}/stats": Row("200 200 200 200 403 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/stats": Row("200 200 200 200 403 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/agents/{user_id}": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "PUT /v1/orgs/{org_id}/agents/{user_id}/status": Row("200 200 200 200 200 403 404 404 401 401 401 401",
                                                         body={"status": "available"}),
    "PATCH /v1/orgs/{org_id}/agents/{user_id}": Row("200 200 200 200 403 403 404 404 401 401 401 401",
                                                  body={"max_concurrent": 3}),
    # The agent's event stream: 101 is the accepted WebSocket, 403 the refused handshake.
    "WS /v1/orgs/{org_id}/agents/{user_id}/events": Row("101 101 101 101 101 403 403 403 403 403 403 403"),
    # ---------------------------------------------------------------- conversations: reads
    "GET /v1/orgs/{org_id}/inboxes/{inbox_id}/queue": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/transactions": Row("200 200 200 200 200 200 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/transactions/{tx_id}": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/transactions/{tx_id}/events": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/transactions/{tx_id}/messages": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    "GET /v1/orgs/{org_id}/transactions/{tx_id}/outbound": Row("200 200 200 200 200 403 404 404 401 401 401 401"),
    # WhatsApp Back: only a licensed agent of the inbox (whose template is then looked up: none approved).
    "POST /v1/orgs/{org_id}/inboxes/{inbox_id}/outbound": Row(
        "403 403 403 403 422 403 404 404 401 401 401 401",
        body={"to": {"wa_id": "15550001111"}, "template": {"name": "no_such_template", "language": "en_US"}}),
    # ---------------------------------------------------------------- conversations: actions (in this order)
    # tx1 is queued in a manual inbox: nobody holds an offer; only its member may claim it (and does).
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/accept": Row("403 403 403 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/decline": Row("403 403 403 403 403 403 404 404 401 401 401 401"),
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/claim": Row("403 403 403 403 200 403 404 404 401 401 401 401"),
    # Only the agent holding it writes in it (the customer's window is open).
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/messages": Row("403 403 403 403 202 403 404 404 401 401 401 401",
                                                                body={"type": "text", "text": "hello"}),
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/transfer": Row("422 422 422 422 403 403 404 404 401 401 401 401",
                                                                body={}),
    # The platform admin closes it (as a supervisor): everyone after it finds it closed, but member2 is
    # refused before learning that.
    "POST /v1/orgs/{org_id}/transactions/{tx_id}/close": Row("200 409 409 409 409 403 404 404 401 401 401 401"),
}


@dataclass
class World:
    gateway: Gateway
    org: Org
    foreign: Org
    tokens: dict[str, str | None]
    headers: dict[str, dict[str, str]]
    member_id: int
    member2_id: int
    inbox1: int
    inbox2: int
    tx1: int
    tx2: int
    markers: dict[str, list[str]]  # per organization: strings only its own callers may ever see


def _conversation(gateway: Gateway, org: Org, number: int, customer: str, inbox_id: int) -> int:
    response = org.sender().send_sync(text_from(org, number, customer, "hello from a customer"))
    assert response.status_code == 200, response.text

    def find() -> int | None:
        rows = gateway.items(org.path("/transactions"), org.owner_token, inbox_id=inbox_id)
        return next((int(t["id"]) for t in rows if t["customer"]["wa_id"] == customer), None)

    found: int = eventually(find, what=f"the conversation of {customer}")
    return found


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> Iterator[World]:
    org_name = unique("MatrixOrgA")
    org = create_org(gateway, org_name)
    link_waba(org, add_simulated_waba(gateway))
    admin_cc_id, admin_cc = org.add_user("admin", ["phone_system", "contact_center"])
    _, admin = org.add_user("admin", ["phone_system"])
    member_id, member = org.add_user("member")
    member2_id, member2 = org.add_user("member")
    deleted_id, deleted = org.add_user("member")
    gateway.ok("DELETE", org.path(f"/users/{deleted_id}"), org.owner_token, 204)
    revoked = gateway.ok("POST", org.path(f"/users/{admin_cc_id}/tokens"), org.owner_token, 201, json={})
    gateway.ok("DELETE", org.path(f"/users/{admin_cc_id}/tokens/{revoked['id']}"), org.owner_token, 204)
    names = [unique("MatrixInboxA1"), unique("MatrixInboxA2")]
    inboxes = [int(gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201, json={
        "name": names[i], "phone_number_id": org.numbers[i], "assignment_mode": "manual",
        "agents": [{"user_id": uid, "proficiency": 1}]})["id"]) for i, uid in enumerate((member_id, member2_id))]
    for uid, token in ((member_id, member), (member2_id, member2)):
        gateway.ok("PUT", org.path(f"/agents/{uid}/status"), token, json={"status": "available"})
    customers = ["+1555" + str(10**6 + secrets.randbelow(10**6)), "+1556" + str(10**6 + secrets.randbelow(10**6))]
    tx1 = _conversation(gateway, org, 0, customers[0], inboxes[0])
    tx2 = _conversation(gateway, org, 1, customers[1], inboxes[1])

    foreign_name = unique("MatrixOrgB")
    foreign = create_org(gateway, foreign_name)
    link_waba(foreign, add_simulated_waba(gateway))
    _, foreign_member = foreign.add_user("member")
    foreign_inbox = unique("MatrixInboxB")
    gateway.ok("POST", foreign.path("/inboxes"), foreign.owner_token, 201, json={
        "name": foreign_inbox, "phone_number_id": foreign.numbers[0]})

    tokens: dict[str, str | None] = {
        "platform": gateway.admin_token, "owner": org.owner_token, "admin_cc": admin_cc, "admin": admin,
        "member": member, "member2": member2, "f_owner": foreign.owner_token, "f_member": foreign_member,
        "deleted": deleted, "revoked": revoked["token"], "none": None, "malformed": "not a token at all",
    }
    headers = {name: ({} if token is None else {"Authorization": f"Bearer {token}"})
               for name, token in tokens.items()}
    headers["malformed"] = {"Authorization": f"Basic {uuid.uuid4().hex}"}
    markers = {
        "A": [org_name, *names, *(c.lstrip("+") for c in customers), org.access_token, org.app_secret],
        "B": [foreign_name, foreign_inbox, foreign.access_token, foreign.app_secret, foreign.waba_id],
    }
    yield World(gateway, org, foreign, tokens, headers, member_id, member2_id, inboxes[0], inboxes[1], tx1, tx2,
                markers)


def _application_routes() -> set[str]:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", admin_token=secrets.token_urlsafe(32)))
    found: set[str] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path
        assert path is not None
        methods = context.methods
        if type(context.original_route).__name__ == "APIWebSocketRoute":
            found.add(f"{_WS} {path}")
        elif not methods:  # a mount (static files)
            found.add(f"GET {path}")
        else:
            found |= {f"{method} {path}" for method in methods if method != "HEAD"}
    return found


def test_every_route_has_a_row() -> None:
    routes = _application_routes()
    assert len(routes) > 50
    missing = sorted(routes - set(TABLE))
    assert not missing, f"routes without a row in the access matrix: {missing}"
    stale = sorted(set(TABLE) - routes)
    assert not stale, f"rows for routes that no longer exist: {stale}"
    for key, row in TABLE.items():
        assert row.expected == SAME or len(row.expected.split()) == len(CALLERS), key


def _fill(world: World, template: str, overrides: dict[str, Any] | None) -> str:
    values: dict[str, Any] = {
        "org_id": world.org.id, "user_id": world.member_id, "inbox_id": world.inbox1, "tx_id": world.tx1,
        "waba_id": world.org.waba_id, "phone_number_id": world.org.numbers[0], "name": "no_such_template",
        "token_id": ABSENT, **(overrides or {}),
    }
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), template)


def _socket_status(world: World, path: str, caller: str) -> tuple[int, str]:
    url = world.gateway.url.replace("http://", "ws://") + path
    try:
        with connect(url, additional_headers=world.headers[caller], open_timeout=10) as socket:
            return 101, str(socket.recv(timeout=10))
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.body.decode(errors="replace") if refused.response.body \
            else ""


def _call(world: World, key: str, row: Row, caller: str) -> tuple[int, str]:
    method, template = key.split(" ", 1)
    path = _fill(world, template, row.path)
    if method == _WS:
        return _socket_status(world, path, caller)
    kwargs: dict[str, Any] = {"headers": world.headers[caller]}
    if row.body is not None:
        kwargs["json"] = row.body
    response = world.gateway.http.request(method, path, **kwargs)
    return response.status_code, response.text


def _leaks(world: World, caller: str, text: str) -> list[str]:
    """What an answer to `caller` shows of an organization the caller does not belong to."""
    if caller == "platform":
        return []
    if caller in UNAUTHENTICATED:
        hidden = world.markers["A"] + world.markers["B"]
    elif caller in FOREIGN:
        hidden = world.markers["A"]
    else:
        hidden = world.markers["B"]
    return [marker for marker in hidden if marker and marker in text]


def test_access_matrix(world: World) -> None:
    observed: dict[str, list[str]] = {}
    mismatches: list[str] = []
    leaks: list[str] = []
    for key, row in TABLE.items():
        observed[key] = []
        first: str | None = None
        for caller, listed in zip(CALLERS, row.expected.split() * (len(CALLERS) if row.expected == SAME else 1),
                                  strict=True):
            status, text = _call(world, key, row, caller)
            observed[key].append(str(status))
            first = first or str(status)
            expected = first if listed == SAME else listed
            if str(status) != expected:
                mismatches.append(f"{key} as {caller}: expected {expected}, got {status} {text[:200]}")
            if key.split(" ", 1)[1] not in ("/openapi.json", "/", "/docs", "/style.css"):
                leaks += [f"{key} as {caller} shows {marker!r}" for marker in _leaks(world, caller, text)]
    table = "\n".join(f'    "{key}": {" ".join(statuses)}' for key, statuses in observed.items())
    assert not mismatches, "\n".join(mismatches) + "\nobserved:\n" + table
    assert not leaks, "\n".join(leaks)


def test_the_table_keeps_the_rules() -> None:
    """Invariants of the table itself, so an edited row cannot quietly open a hole."""
    column = {caller: i for i, caller in enumerate(CALLERS)}
    for key, row in TABLE.items():
        statuses = row.expected.split()
        path = key.split(" ", 1)[1]
        if not path.startswith("/v1/"):
            continue
        assert row.expected != SAME, key
        if key.startswith(_WS):
            assert all(statuses[column[c]] == "403" for c in (*UNAUTHENTICATED, *FOREIGN)), key
            continue
        assert all(statuses[column[c]] == "401" for c in UNAUTHENTICATED), key
        if path.startswith("/v1/orgs/{org_id}"):
            # Another organization's resources look exactly like absent ones.
            assert all(statuses[column[c]] == "404" for c in FOREIGN), key
        if "{tx_id}" in path or "{inbox_id}" in path:
            # A member who does not serve the inbox learns nothing of it or its conversations.
            assert statuses[column["member2"]] == "403", key


def test_agents_see_only_the_conversations_of_their_own_inboxes(world: World) -> None:
    gateway, org = world.gateway, world.org
    member, member2 = world.tokens["member"], world.tokens["member2"]
    assert member is not None and member2 is not None
    owner_view = {t["id"] for t in gateway.items(org.path("/transactions"), org.owner_token)}
    assert {world.tx1, world.tx2} <= owner_view
    # Each member lists only their inbox's conversation, whatever the filter asks for.
    for token, mine, other_inbox in ((member, world.tx1, world.inbox2), (member2, world.tx2, world.inbox1)):
        assert [t["id"] for t in gateway.items(org.path("/transactions"), token)] == [mine]
        assert gateway.items(org.path("/transactions"), token, inbox_id=other_inbox) == []
        for state in ("queued", "offered", "assigned", "closed"):
            assert {t["id"] for t in gateway.items(org.path("/transactions"), token, state=state)} <= {mine}
    # The other inbox's conversation, its trail, messages and replies: refused, and nothing of it shown.
    for token, theirs in ((member, world.tx2), (member2, world.tx1)):
        for suffix in ("", "/events", "/messages", "/outbound"):
            response = gateway.call("GET", org.path(f"/transactions/{theirs}{suffix}"), token)
            assert response.status_code == 403, f"{suffix}: {response.status_code} {response.text}"
            assert set(json.loads(response.text)) <= {"detail"}
            assert not any(m in response.text for m in world.markers["A"][3:5])
    # The foreign organization's agent finds no such conversations at all.
    f_member = world.tokens["f_member"]
    for tx in (world.tx1, world.tx2):
        assert gateway.call("GET", org.path(f"/transactions/{tx}"), f_member).status_code == 404
        assert gateway.call("GET", world.foreign.path(f"/transactions/{tx}"), f_member).status_code == 404
    assert gateway.items(world.foreign.path("/transactions"), world.foreign.owner_token) == []
