"""Acceptance: inboxes (CRUD, validation naming the field, one number per inbox) and who may be an agent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Gateway, Org, assert_invalid, create_org, org_with_waba

MODES = ["round_robin", "manual", "proficiency", "sticky", "longest_idle"]
AGENT = ["phone_system", "contact_center_whatsapp"]


@pytest.fixture(scope="module")
def org(gateway: Gateway) -> Org:
    """One organization with a WABA of many numbers, shared by the read-only validation tests."""
    return org_with_waba(gateway, numbers=12)


def _inboxes(org: Org) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = org.gateway.items(org.path("/inboxes"), org.owner_token)
    return result


def test_inbox_lifecycle_with_defaults_and_every_field_patchable(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=3)
    agent_a, _ = org.add_user(name="Ana")
    agent_b, _ = org.add_user(name="Bo")
    created = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                         json={"name": "Sales", "type": "whatsapp", "phone_number_id": org.numbers[0],
                               "agents": [{"user_id": agent_a}]})
    assert created["name"] == "Sales" and created["type"] == "whatsapp" and created["org_id"] == org.id
    assert (created["assignment_mode"], created["reassign_after_s"], created["dials_per_agent"]) == ("round_robin",
                                                                                                   30, 1)
    assert created["agents"] == [{"user_id": agent_a, "name": "Ana", "proficiency": 1}]
    assert created["display_phone_number"] == f"+1 555 {org.numbers[0][-7:]}"
    assert gateway.ok("GET", org.path(f"/inboxes/{created['id']}"), org.owner_token) == created
    assert _inboxes(org) == [created]

    patch = {"name": "Sales EU", "phone_number_id": org.numbers[1], "assignment_mode": "proficiency",
             "reassign_after_s": 900, "dials_per_agent": 100,
             "agents": [{"user_id": agent_b, "proficiency": 100}, {"user_id": agent_a, "proficiency": 5}]}
    patched = gateway.ok("PATCH", org.path(f"/inboxes/{created['id']}"), org.owner_token, json=patch)
    for field in ("name", "phone_number_id", "assignment_mode", "reassign_after_s", "dials_per_agent"):
        assert patched[field] == patch[field], field
    assert {(a["user_id"], a["proficiency"]) for a in patched["agents"]} == {(agent_b, 100), (agent_a, 5)}
    assert gateway.ok("GET", org.path(f"/inboxes/{created['id']}"), org.owner_token) == patched
    # The old number is free again, the new one taken.
    numbers = {n["phone_number_id"]: n["available"]
               for n in gateway.items(org.path("/whatsapp/numbers"), org.owner_token)}
    assert numbers[org.numbers[0]] and not numbers[org.numbers[1]]
    # Only the named field changes.
    renamed = gateway.ok("PATCH", org.path(f"/inboxes/{created['id']}"), org.owner_token, json={"name": "Sales"})
    assert {k: v for k, v in renamed.items() if k not in ("name", "updated_at")} == \
        {k: v for k, v in patched.items() if k not in ("name", "updated_at")}

    gateway.ok("DELETE", org.path(f"/inboxes/{created['id']}"), org.owner_token, 204)
    assert gateway.call("GET", org.path(f"/inboxes/{created['id']}"), org.owner_token).status_code == 404
    assert gateway.call("DELETE", org.path(f"/inboxes/{created['id']}"), org.owner_token).status_code == 404
    assert _inboxes(org) == []


def test_every_assignment_mode_is_accepted(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=len(MODES))
    for mode, number in zip(MODES, org.numbers, strict=True):
        inbox = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                           json={"name": mode, "phone_number_id": number, "assignment_mode": mode})
        assert inbox["assignment_mode"] == mode
    assert sorted(i["assignment_mode"] for i in _inboxes(org)) == sorted(MODES)


def test_one_number_per_inbox(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=2)
    first = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                       json={"name": "One", "phone_number_id": org.numbers[0]})
    second = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                        json={"name": "Two", "phone_number_id": org.numbers[1]})
    assert gateway.call("POST", org.path("/inboxes"), org.owner_token,
                        json={"name": "Three", "phone_number_id": org.numbers[0]}).status_code == 409
    assert gateway.call("PATCH", org.path(f"/inboxes/{second['id']}"), org.owner_token,
                        json={"phone_number_id": org.numbers[0]}).status_code == 409
    assert [(i["name"], i["phone_number_id"]) for i in _inboxes(org)] == [("One", org.numbers[0]),
                                                                         ("Two", org.numbers[1])]
    # Re-sending its own number is not a conflict.
    gateway.ok("PATCH", org.path(f"/inboxes/{first['id']}"), org.owner_token, json={"phone_number_id": org.numbers[0]})


BAD_FIELDS: list[tuple[dict[str, Any], tuple[str | int, ...]]] = [
    ({"name": ""}, ("body", "name")),
    ({"name": "x" * 201}, ("body", "name")),
    ({"name": None}, ("body", "name")),
    ({"type": "sms"}, ("body", "type")),
    ({"phone_number_id": ""}, ("body", "phone_number_id")),
    ({"phone_number_id": "1" * 65}, ("body", "phone_number_id")),
    ({"assignment_mode": "random"}, ("body", "assignment_mode")),
    ({"reassign_after_s": 0}, ("body", "reassign_after_s")),
    ({"reassign_after_s": 901}, ("body", "reassign_after_s")),
    ({"reassign_after_s": "soon"}, ("body", "reassign_after_s")),
    ({"reassign_after_s": 2**80}, ("body", "reassign_after_s")),
    ({"dials_per_agent": 0}, ("body", "dials_per_agent")),
    ({"dials_per_agent": 101}, ("body", "dials_per_agent")),
    ({"agents": "everyone"}, ("body", "agents")),
    ({"agents": [{"proficiency": 5}]}, ("body", "agents", 0, "user_id")),
    ({"agents": [{"user_id": 2**70}]}, ("body", "agents", 0, "user_id")),
    ({"agents": [{"user_id": 1, "proficiency": 0}]}, ("body", "agents", 0, "proficiency")),
    ({"agents": [{"user_id": 1, "proficiency": 101}]}, ("body", "agents", 0, "proficiency")),
    ({"agents": [{"user_id": 1, "skill": 3}]}, ("body", "agents", 0, "skill")),
    ({"queue_timeout": 5}, ("body", "queue_timeout")),
]


@pytest.mark.parametrize(("change", "loc"), BAD_FIELDS)
def test_bad_inbox_input_is_422_naming_the_field_and_writes_nothing(org: Org, change: dict[str, Any],
                                                                    loc: tuple[str | int, ...]) -> None:
    gateway = org.gateway
    inboxes = _inboxes(org)
    if not inboxes:
        inboxes = [gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                              json={"name": "Existing", "phone_number_id": org.numbers[0]})]
    body = {"name": "New", "phone_number_id": org.numbers[1], **change}
    assert_invalid(gateway.call("POST", org.path("/inboxes"), org.owner_token, json=body), *loc)
    if "type" not in change:  # the type is fixed at creation
        patch = gateway.call("PATCH", org.path(f"/inboxes/{inboxes[0]['id']}"), org.owner_token, json=change)
        assert_invalid(patch, *loc)
    assert _inboxes(org) == inboxes


def test_references_are_checked_and_named(gateway: Gateway, org: Org) -> None:
    other = org_with_waba(gateway, numbers=1)
    stranger, _ = other.add_user()
    unlicensed, _ = org.add_user(licenses=["phone_system"], name="Una")
    agent, _ = org.add_user()
    before = _inboxes(org)
    cases: list[tuple[dict[str, Any], tuple[str | int, ...], list[str]]] = [
        ({"phone_number_id": "123456"}, ("body", "phone_number_id"), ["123456"]),
        ({"phone_number_id": other.numbers[0]}, ("body", "phone_number_id"), []),
        ({"agents": [{"user_id": agent}, {"user_id": stranger}]}, ("body", "agents", 1, "user_id"), [str(stranger)]),
        ({"agents": [{"user_id": agent}, {"user_id": unlicensed}]}, ("body", "agents", 1, "user_id"),
         [str(unlicensed), "Una", "contact_center_whatsapp"]),
        ({"agents": [{"user_id": org.owner_id}]}, ("body", "agents", 0, "user_id"),
         [str(org.owner_id), "contact_center_whatsapp"]),
        ({"agents": [{"user_id": agent}, {"user_id": agent}]}, ("body", "agents"), [str(agent)]),
    ]
    for change, loc, mentions in cases:
        response = gateway.call("POST", org.path("/inboxes"), org.owner_token,
                                json={"name": "New", "phone_number_id": org.numbers[2], **change})
        assert_invalid(response, *loc)
        assert all(m in response.text for m in mentions), response.text
    assert _inboxes(org) == before


def test_agent_candidates_are_exactly_the_whatsapp_licensed_users(gateway: Gateway) -> None:
    org = create_org(gateway)
    expected = [org.add_user("member", AGENT)[0], org.add_user("admin", [*AGENT, "contact_center"])[0],
                org.add_user("owner", ["phone_system", "contact_center", "contact_center_whatsapp"])[0]]
    org.add_user("member", ["phone_system"])
    org.add_user("member", [])
    org.add_user("admin", ["phone_system", "contact_center"])
    candidates = gateway.items(org.path("/inboxes/agent-candidates"), org.owner_token)
    assert [c["user_id"] for c in candidates] == expected
    assert {"user_id", "name", "email", "role"} <= set(candidates[0])
    _, member_token = org.add_user()
    assert gateway.call("GET", org.path("/inboxes/agent-candidates"), member_token).status_code == 403


def test_revoking_the_whatsapp_licence_removes_the_user_from_every_inbox(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=2)
    leaving, _ = org.add_user(name="Leaving")
    staying, _ = org.add_user(name="Staying")
    agents = [{"user_id": leaving}, {"user_id": staying}]
    ids = [gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                      json={"name": f"Inbox {n}", "phone_number_id": number, "agents": agents})["id"]
           for n, number in enumerate(org.numbers)]
    gateway.ok("PATCH", org.path(f"/users/{leaving}"), org.owner_token, json={"licenses": ["phone_system"]})
    for inbox_id in ids:
        inbox = gateway.ok("GET", org.path(f"/inboxes/{inbox_id}"), org.owner_token)
        assert [a["user_id"] for a in inbox["agents"]] == [staying]
    assert leaving not in [c["user_id"] for c in gateway.items(org.path("/inboxes/agent-candidates"),
                                                             org.owner_token)]
    refused = gateway.call("PATCH", org.path(f"/inboxes/{ids[0]}"), org.owner_token, json={"agents": agents})
    assert_invalid(refused, "body", "agents", 0, "user_id")
    assert "contact_center_whatsapp" in refused.text
    # Changing other licences keeps a WhatsApp agent where they are.
    gateway.ok("PATCH", org.path(f"/users/{staying}"), org.owner_token, json={"licenses": [*AGENT, "contact_center"]})
    assert [a["user_id"] for a in gateway.ok("GET", org.path(f"/inboxes/{ids[1]}"), org.owner_token)["agents"]] == \
        [staying]


def test_members_see_only_the_inboxes_they_serve_and_configure_nothing(gateway: Gateway) -> None:
    org = org_with_waba(gateway, numbers=2)
    member, token = org.add_user()
    served = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                        json={"name": "Served", "phone_number_id": org.numbers[0], "agents": [{"user_id": member}]})
    hidden = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                        json={"name": "Hidden", "phone_number_id": org.numbers[1]})
    assert [i["id"] for i in gateway.items(org.path("/inboxes"), token)] == [served["id"]]
    gateway.ok("GET", org.path(f"/inboxes/{served['id']}"), token)
    assert gateway.call("GET", org.path(f"/inboxes/{hidden['id']}"), token).status_code == 403
    assert gateway.call("POST", org.path("/inboxes"), token, json={"name": "Mine", "phone_number_id": org.numbers[1]}
                        ).status_code == 403
    assert gateway.call("PATCH", org.path(f"/inboxes/{served['id']}"), token, json={"name": "Mine"}).status_code == 403
    assert gateway.call("DELETE", org.path(f"/inboxes/{served['id']}"), token).status_code == 403
    assert [i["name"] for i in _inboxes(org)] == ["Served", "Hidden"]


def test_inboxes_of_another_org_are_invisible(gateway: Gateway) -> None:
    org, other = org_with_waba(gateway, numbers=1), org_with_waba(gateway, numbers=1)
    theirs = gateway.ok("POST", other.path("/inboxes"), other.owner_token, 201,
                        json={"name": "Theirs", "phone_number_id": other.numbers[0]})
    for method in ("GET", "PATCH", "DELETE"):
        response = gateway.call(method, org.path(f"/inboxes/{theirs['id']}"), org.owner_token, json={"name": "Mine"})
        assert response.status_code == 404
    assert gateway.ok("GET", other.path(f"/inboxes/{theirs['id']}"), other.owner_token)["name"] == "Theirs"
