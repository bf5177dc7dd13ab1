"""Acceptance: bearer authentication, organizations and users (roles, licences) over real HTTP."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from tests.support import Gateway, Org, assert_invalid, create_org, org_with_waba, query_db, unique

ALL = ["phone_system", "contact_center", "contact_center_whatsapp"]


def _user_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": unique("user"), "email": f"{unique('u')}@example.com", "role": "member",
                            "licenses": ["phone_system", "contact_center_whatsapp"]}
    body.update(overrides)
    return body


def _v1_operations(gateway: Gateway) -> list[tuple[str, str]]:
    spec = gateway.ok("GET", "/openapi.json", None)
    return [(method.upper(), path) for path, ops in spec["paths"].items() if path.startswith("/v1")
            for method in ops]


def _fill(path: str, org: Org, inbox_id: int) -> str:
    values = {"org_id": org.id, "user_id": org.owner_id, "inbox_id": inbox_id, "waba_id": org.waba_id, "tx_id": 1,
              "phone_number_id": org.numbers[0], "name": "a_template", "token_id": 1}
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


# ---------------------------------------------------------------- authentication


def test_every_v1_route_needs_a_valid_bearer_token_and_never_leaks_another_org(gateway: Gateway) -> None:
    victim = org_with_waba(gateway)
    inbox = gateway.ok("POST", victim.path("/inboxes"), victim.owner_token, 201,
                       json={"name": "Victim inbox", "phone_number_id": victim.numbers[0]})
    intruder = create_org(gateway)
    operations = _v1_operations(gateway)
    assert len(operations) >= 20  # the whole API, not a handful of routes
    for method, template in operations:
        path = _fill(template, victim, inbox["id"])
        # Bodies are irrelevant: authentication is checked before anything else is looked at.
        for headers in ({}, {"Authorization": "Bearer war_not-a-real-token"}, {"Authorization": "Basic Zm9vOmJhcg=="},
                        {"Authorization": "Bearer"}):
            response = gateway.http.request(method, path, headers=headers, json={})
            assert response.status_code == 401, f"{method} {path} {headers}: {response.status_code}"
        response = gateway.call(method, path, intruder.owner_token, json={})
        if template == "/v1/me":
            # The caller's own identity: the intruder sees itself, nothing of the victim.
            assert response.status_code == 200 and response.json()["org"]["id"] == intruder.id
            assert victim.access_token not in response.text and "Victim inbox" not in response.text
        elif template == "/v1/orgs":
            assert response.status_code == 403, f"{method} {path}: {response.status_code}"
        else:
            # Another organization's resources look exactly like absent ones (or are refused).
            assert response.status_code in (403, 404), f"{method} {path}: {response.status_code} {response.text}"
            assert victim.access_token not in response.text and "Victim inbox" not in response.text
    # Nothing of the victim was changed by the refused calls.
    assert gateway.ok("GET", victim.path(f"/inboxes/{inbox['id']}"), victim.owner_token)["name"] == "Victim inbox"
    assert len(gateway.items(victim.path("/users"), victim.owner_token)) == 1


def test_tokens_are_stored_only_as_hashes(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, token = org.add_user()
    rows = query_db(gateway, "SELECT token_hash, user_id FROM api_tokens WHERE user_id IN (:a, :b)",
                    a=org.owner_id, b=user_id)
    stored = {row[1]: row[0] for row in rows}
    assert stored[user_id] == hashlib.sha256(token.encode()).hexdigest()
    assert stored[org.owner_id] == hashlib.sha256(org.owner_token.encode()).hexdigest()
    everything = query_db(gateway, "SELECT token_hash FROM api_tokens")
    assert all(token not in row[0] and org.owner_token not in row[0] for row in everything)


def test_deleted_user_token_stops_working(gateway: Gateway) -> None:
    org = create_org(gateway)
    user_id, token = org.add_user()
    gateway.ok("GET", org.path(f"/users/{user_id}"), token)
    gateway.ok("DELETE", org.path(f"/users/{user_id}"), org.owner_token, 204)
    assert gateway.call("GET", org.path(f"/users/{user_id}"), token).status_code == 401
    assert gateway.call("GET", org.path(f"/users/{user_id}"), org.owner_token).status_code == 404


# ---------------------------------------------------------------- organizations


def test_platform_admin_creates_an_organization_with_its_owner(gateway: Gateway) -> None:
    name = unique("Acme")
    created = gateway.ok("POST", "/v1/orgs", gateway.admin_token, 201,
                         json={"name": name, "owner": {"name": "Olivia", "email": f"{unique('o')}@example.com"}})
    assert created["name"] == name and isinstance(created["id"], int)
    owner = created["owner"]
    assert isinstance(owner["id"], int) and owner["token"]
    me = gateway.ok("GET", f"/v1/orgs/{created['id']}/users/{owner['id']}", owner["token"])
    assert me["role"] == "owner" and me["is_supervisor"] and "token" not in me
    assert gateway.ok("GET", f"/v1/orgs/{created['id']}", owner["token"])["name"] == name
    listed = gateway.items("/v1/orgs", gateway.admin_token)
    assert created["id"] in [o["id"] for o in listed]


def test_only_the_platform_admin_creates_or_lists_organizations(gateway: Gateway) -> None:
    org = create_org(gateway)
    body = {"name": "Nope", "owner": {"name": "X", "email": f"{unique('x')}@example.com"}}
    before = len(gateway.items("/v1/orgs", gateway.admin_token))
    assert gateway.call("POST", "/v1/orgs", org.owner_token, json=body).status_code == 403
    assert gateway.call("GET", "/v1/orgs", org.owner_token).status_code == 403
    assert gateway.call("POST", "/v1/orgs", None, json=body).status_code == 401
    assert len(gateway.items("/v1/orgs", gateway.admin_token)) == before


@pytest.mark.parametrize(("body", "loc"), [
    ({"owner": {"name": "O", "email": "o@example.com"}}, ("body", "name")),
    ({"name": "", "owner": {"name": "O", "email": "o@example.com"}}, ("body", "name")),
    ({"name": "A", "owner": {"name": "O", "email": "not-an-email"}}, ("body", "owner", "email")),
    ({"name": "A", "owner": {"email": "o@example.com"}}, ("body", "owner", "name")),
    ({"name": "A"}, ("body", "owner")),
    ({"name": "A", "owner": {"name": "O", "email": "o@example.com"}, "plan": "gold"}, ("body", "plan")),
    ({"name": "A", "owner": {"name": "O", "email": "o@example.com", "licenses": ["contact_center"]}},
     ("body", "owner", "licenses")),
])
def test_bad_organization_input_is_422_naming_the_field(gateway: Gateway, body: dict[str, Any],
                                                        loc: tuple[str, ...]) -> None:
    before = len(gateway.items("/v1/orgs", gateway.admin_token))
    assert_invalid(gateway.call("POST", "/v1/orgs", gateway.admin_token, json=body), *loc)
    assert len(gateway.items("/v1/orgs", gateway.admin_token)) == before


def test_out_of_range_ids_in_paths_are_refused_not_crashed(gateway: Gateway) -> None:
    org = create_org(gateway)
    huge = 2**70
    for token in (gateway.admin_token, org.owner_token):
        for path in (f"/v1/orgs/{huge}", f"/v1/orgs/{huge}/users", f"/v1/orgs/{org.id}/users/{huge}",
                     f"/v1/orgs/{org.id}/inboxes/{huge}", f"/v1/orgs/{org.id}/users/-1"):
            response = gateway.call("GET", path, token)
            assert response.status_code in (404, 422), f"{path}: {response.status_code} {response.text}"
    # Agent and transaction routes name the offending path or query field.
    for method, path, field in (("GET", f"/v1/orgs/{org.id}/agents/{huge}", ["path", "user_id"]),
                                ("GET", f"/v1/orgs/{org.id}/transactions/{huge}", ["path", "tx_id"]),
                                ("POST", f"/v1/orgs/{org.id}/transactions/{huge}/accept", ["path", "tx_id"]),
                                ("GET", f"/v1/orgs/{org.id}/inboxes/{huge}/queue", ["path", "inbox_id"]),
                                ("GET", f"/v1/orgs/{org.id}/transactions?agent_id={huge}", ["query", "agent_id"])):
        response = gateway.call(method, path, org.owner_token)
        assert response.status_code == 422, f"{path}: {response.status_code} {response.text}"
        assert [e["loc"] for e in response.json()["detail"]] == [field]


# ---------------------------------------------------------------- users


def test_user_lifecycle_token_shown_once(gateway: Gateway) -> None:
    org = create_org(gateway)
    body = _user_body(role="admin", licenses=["contact_center", "phone_system"])
    created = gateway.ok("POST", org.path("/users"), org.owner_token, 201, json=body)
    assert created["token"] and created["role"] == "admin" and created["is_supervisor"]
    assert created["licenses"] == ["phone_system", "contact_center"]
    assert not created["can_handle_whatsapp"]
    one = gateway.ok("GET", org.path(f"/users/{created['id']}"), org.owner_token)
    assert "token" not in one and one["email"] == body["email"]
    listed = gateway.items(org.path("/users"), org.owner_token)
    assert [u["id"] for u in listed] == [org.owner_id, created["id"]]
    assert all("token" not in u for u in listed) and created["token"] not in str(listed)

    patched = gateway.ok("PATCH", org.path(f"/users/{created['id']}"), org.owner_token,
                         json={"role": "member", "licenses": ALL})
    assert patched["role"] == "member" and not patched["is_supervisor"] and patched["can_handle_whatsapp"]
    assert gateway.ok("GET", org.path(f"/users/{created['id']}"), org.owner_token)["licenses"] == ALL
    # Their token keeps working across the change, now as an agent.
    assert gateway.call("GET", org.path("/users"), created["token"]).status_code == 403

    gateway.ok("DELETE", org.path(f"/users/{created['id']}"), org.owner_token, 204)
    assert [u["id"] for u in gateway.items(org.path("/users"), org.owner_token)] == [org.owner_id]


@pytest.mark.parametrize(("overrides", "loc"), [
    ({"role": "superuser"}, ("body", "role")),
    ({"licenses": ["contact_center"]}, ("body", "licenses")),
    ({"licenses": ["contact_center_whatsapp"]}, ("body", "licenses")),
    ({"licenses": ["phone_system", "telepathy"]}, ("body", "licenses", 1)),
    ({"licenses": ["phone_system", "phone_system"]}, ("body", "licenses")),
    ({"licenses": "phone_system"}, ("body", "licenses")),
    ({"email": "nobody"}, ("body", "email")),
    ({"name": ""}, ("body", "name")),
    ({"name": None}, ("body", "name")),
    ({"licenses": None}, ("body", "licenses")),
    ({"name": "x" * 201}, ("body", "name")),
    ({"token": "mine"}, ("body", "token")),
])
def test_bad_user_input_is_422_naming_the_field_and_writes_nothing(gateway: Gateway, overrides: dict[str, Any],
                                                                   loc: tuple[str | int, ...]) -> None:
    org = create_org(gateway)
    assert_invalid(gateway.call("POST", org.path("/users"), org.owner_token, json=_user_body(**overrides)), *loc)
    assert len(gateway.items(org.path("/users"), org.owner_token)) == 1
    # The same rules hold on PATCH, and a refused PATCH changes nothing.
    patch = {k: v for k, v in overrides.items() if k in ("role", "licenses", "name")} or {"token": "x"}
    before = gateway.ok("GET", org.path(f"/users/{org.owner_id}"), org.owner_token)
    response = gateway.call("PATCH", org.path(f"/users/{org.owner_id}"), org.owner_token, json=patch)
    assert_invalid(response, *(loc if loc[1] in patch else ("body", "token")))
    assert gateway.ok("GET", org.path(f"/users/{org.owner_id}"), org.owner_token) == before


def test_duplicate_email_in_an_org_is_409_but_fine_in_another_org(gateway: Gateway) -> None:
    org, other = create_org(gateway), create_org(gateway)
    body = _user_body()
    gateway.ok("POST", org.path("/users"), org.owner_token, 201, json=body)
    again = gateway.call("POST", org.path("/users"), org.owner_token, json={**body, "email": body["email"].upper()})
    assert again.status_code == 409 and "email" in again.text
    gateway.ok("POST", other.path("/users"), other.owner_token, 201, json=body)


def test_roles_members_are_agents_and_only_owners_manage_owners(gateway: Gateway) -> None:
    org = create_org(gateway)
    member_id, member_token = org.add_user("member")
    other_member, _ = org.add_user("member")
    admin_id, admin_token = org.add_user("admin", ["phone_system", "contact_center"])
    # Members read only themselves and manage nobody.
    assert gateway.ok("GET", org.path(f"/users/{member_id}"), member_token)["id"] == member_id
    assert gateway.call("GET", org.path(f"/users/{other_member}"), member_token).status_code == 403
    assert gateway.call("GET", org.path("/users"), member_token).status_code == 403
    assert gateway.call("POST", org.path("/users"), member_token, json=_user_body()).status_code == 403
    assert gateway.call("PATCH", org.path(f"/users/{member_id}"), member_token,
                        json={"role": "owner"}).status_code == 403
    # Admins manage members and admins but not owners.
    gateway.ok("PATCH", org.path(f"/users/{member_id}"), admin_token, json={"role": "admin"})
    assert gateway.call("POST", org.path("/users"), admin_token, json=_user_body(role="owner")).status_code == 403
    assert gateway.call("PATCH", org.path(f"/users/{org.owner_id}"), admin_token,
                        json={"name": "Demoted?"}).status_code == 403
    assert gateway.call("DELETE", org.path(f"/users/{org.owner_id}"), admin_token).status_code == 403
    assert gateway.call("PATCH", org.path(f"/users/{admin_id}"), admin_token, json={"role": "owner"}).status_code == 403
    # The last owner stays.
    assert gateway.call("PATCH", org.path(f"/users/{org.owner_id}"), org.owner_token,
                        json={"role": "admin"}).status_code == 409
    assert gateway.call("DELETE", org.path(f"/users/{org.owner_id}"), org.owner_token).status_code == 409
    owner = gateway.ok("GET", org.path(f"/users/{org.owner_id}"), org.owner_token)
    assert owner["role"] == "owner" and owner["name"] == "Owner"


def test_users_of_another_org_are_invisible(gateway: Gateway) -> None:
    org, other = create_org(gateway), create_org(gateway)
    other_user, _ = other.add_user()
    for method in ("GET", "PATCH", "DELETE"):
        response = gateway.call(method, org.path(f"/users/{other_user}"), org.owner_token, json={"name": "x"})
        assert response.status_code == 404
    assert gateway.ok("GET", other.path(f"/users/{other_user}"), other.owner_token)["name"] != "x"


# ---------------------------------------------------------------- licences on omnichannel configuration


def test_supervisor_without_contact_center_gets_403_naming_the_licence(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    inbox = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                       json={"name": "Sales", "phone_number_id": org.numbers[0]})
    for role in ("admin", "owner"):
        _, token = org.add_user(role, ["phone_system", "contact_center_whatsapp"])
        routes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/whatsapp/webhook", None),
            ("POST", "/whatsapp/webhook/rotate", None),
            ("GET", "/whatsapp/accounts", None),
            ("POST", "/whatsapp/accounts", {"waba_id": org.waba_id, "access_token": org.access_token,
                                            "app_secret": org.app_secret}),
            ("GET", f"/whatsapp/accounts/{org.waba_id}", None),
            ("POST", f"/whatsapp/accounts/{org.waba_id}/refresh", None),
            ("DELETE", f"/whatsapp/accounts/{org.waba_id}", None),
            ("GET", "/whatsapp/numbers", None),
            ("GET", "/inboxes/agent-candidates", None),
            ("POST", "/inboxes", {"name": "New", "phone_number_id": org.numbers[1]}),
            ("PATCH", f"/inboxes/{inbox['id']}", {"name": "Renamed"}),
            ("DELETE", f"/inboxes/{inbox['id']}", None),
        ]
        for method, suffix, body in routes:
            response = gateway.call(method, org.path(suffix), token, json=body)
            assert response.status_code == 403, f"{role} {method} {suffix}: {response.status_code}"
            assert "contact_center" in response.json()["detail"], response.text
    # Nothing changed.
    assert [i["name"] for i in gateway.items(org.path("/inboxes"), org.owner_token)] == ["Sales"]
    # With the licence the same supervisor may configure.
    admin_id, admin_token = org.add_user("admin", ["phone_system"])
    assert gateway.call("GET", org.path("/whatsapp/numbers"), admin_token).status_code == 403
    gateway.ok("PATCH", org.path(f"/users/{admin_id}"), org.owner_token,
               json={"licenses": ["phone_system", "contact_center"]})
    gateway.ok("GET", org.path("/whatsapp/numbers"), admin_token)
