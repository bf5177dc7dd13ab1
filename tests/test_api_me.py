"""GET /v1/me: who a token stands for (the console picks its screens from it)."""

from __future__ import annotations

from tests.support import Gateway, create_org


def test_me_names_the_user_and_organization_or_the_platform_admin(gateway: Gateway) -> None:
    org = create_org(gateway, name="Me Org")
    agent_id, agent_token = org.add_user(name="Ada")
    me = gateway.ok("GET", "/v1/me", agent_token)
    assert me["platform_admin"] is False
    assert (me["user"]["id"], me["user"]["name"], me["user"]["is_supervisor"]) == (agent_id, "Ada", False)
    assert me["org"]["id"] == org.id and me["org"]["name"] == "Me Org"
    assert gateway.ok("GET", "/v1/me", org.owner_token)["user"]["is_supervisor"] is True
    assert gateway.ok("GET", "/v1/me", gateway.admin_token) == {"platform_admin": True, "user": None, "org": None}
    assert gateway.call("GET", "/v1/me", "war_unknown").status_code == 401
    assert gateway.call("GET", "/v1/me", None).status_code == 401


def test_console_and_local_api_docs_are_served(gateway: Gateway) -> None:
    index = gateway.call("GET", "/", None)
    assert index.status_code == 200 and "wa-router console" in index.text
    assert gateway.call("GET", "/js/app.js", None).headers["content-type"].startswith(("text/javascript",
                                                                                       "application/javascript"))
    docs = gateway.call("GET", "/docs", None)
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert gateway.call("GET", "/docs-assets/swagger-ui-bundle.js", None).status_code == 200
    assert gateway.call("GET", "/healthz", None).json() == {"status": "ok"}


def test_the_console_leaves_other_paths_to_the_api(gateway: Gateway) -> None:
    assert gateway.call("GET", "/v1/no-such-route", None).json() == {"detail": "Not Found"}
    assert gateway.call("POST", "/no-such-page", None).status_code == 404
    assert gateway.call("POST", "/", None).status_code == 405
    assert gateway.call("DELETE", "/healthz", None).status_code == 405


def test_every_operation_is_documented(gateway: Gateway) -> None:
    spec = gateway.ok("GET", "/openapi.json", None)
    undocumented = [f"{method.upper()} {path}" for path, operations in spec["paths"].items()
                    for method, operation in operations.items()
                    if not operation.get("summary") or len(operation.get("description", "")) < 20]
    assert undocumented == []
