"""Licences are granted and revoked by an owner (or the platform admin), never by an admin, not even on themselves."""

from __future__ import annotations

from tests.support import Gateway, create_org, unique

AGENT = ["phone_system", "contact_center_whatsapp"]


def _licences(gateway: Gateway, org_path: str, user_id: int, token: str) -> list[str]:
    return list(gateway.ok("GET", f"{org_path}/users/{user_id}", token)["licenses"])


def test_an_admin_cannot_grant_themselves_contact_center(gateway: Gateway) -> None:
    org = create_org(gateway)
    admin_id, admin_token = org.add_user("admin", ["phone_system"])
    response = gateway.call("PATCH", org.path(f"/users/{admin_id}"), admin_token,
                            json={"licenses": ["phone_system", "contact_center"]})
    assert response.status_code == 403 and "owner" in response.json()["detail"], response.text
    assert _licences(gateway, org.path(), admin_id, org.owner_token) == ["phone_system"]
    # Still refused on the omnichannel configuration it wanted.
    assert gateway.call("GET", org.path("/whatsapp/numbers"), admin_token).status_code == 403


def test_an_admin_grants_and_revokes_no_licences_to_others(gateway: Gateway) -> None:
    org = create_org(gateway)
    _, admin_token = org.add_user("admin", ["phone_system", "contact_center"])
    member_id, _ = org.add_user("member", AGENT)
    assert gateway.call("PATCH", org.path(f"/users/{member_id}"), admin_token,
                        json={"licenses": ["phone_system"]}).status_code == 403
    assert _licences(gateway, org.path(), member_id, org.owner_token) == AGENT
    body = {"name": "New", "email": f"{unique('n')}@example.com", "role": "member", "licenses": AGENT}
    assert gateway.call("POST", org.path("/users"), admin_token, json=body).status_code == 403
    # Without licences, and changes that leave licences as they are, an admin still manages members.
    gateway.ok("POST", org.path("/users"), admin_token, 201, json={**body, "licenses": []})
    gateway.ok("PATCH", org.path(f"/users/{member_id}"), admin_token, json={"name": "Renamed", "licenses": AGENT})


def test_an_owner_and_the_platform_admin_change_licences(gateway: Gateway) -> None:
    org = create_org(gateway)
    admin_id, _ = org.add_user("admin", ["phone_system"])
    gateway.ok("PATCH", org.path(f"/users/{admin_id}"), org.owner_token,
               json={"licenses": ["phone_system", "contact_center"]})
    gateway.ok("PATCH", org.path(f"/users/{admin_id}"), gateway.admin_token, json={"licenses": ["phone_system"]})
    assert _licences(gateway, org.path(), admin_id, org.owner_token) == ["phone_system"]
    gateway.ok("PATCH", org.path(f"/users/{org.owner_id}"), org.owner_token,
               json={"licenses": ["phone_system", "contact_center", "contact_center_whatsapp"]})
