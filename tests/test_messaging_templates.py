"""Message templates: Meta's validation rules as named 422s, review by webhook, sync with paging, delete."""

from __future__ import annotations

from typing import Any

import pytest

from tests.messaging_support import connect_callback, sim
from tests.routing_support import Scenario
from tests.support import assert_invalid, eventually

VALID: dict[str, Any] = {"name": "order_update", "category": "UTILITY", "languages": ["en_US", "pt_BR"],
                         "header": "Your order", "body": "Hi {{1}}, order {{2}} has shipped.",
                         "footer": "Reply STOP to opt out"}


def _path(sc: Scenario, suffix: str = "") -> str:
    return sc.org.path(f"/whatsapp/accounts/{sc.org.waba_id}/templates{suffix}")


def _languages(sc: Scenario, name: str) -> dict[str, dict[str, Any]]:
    listed = sc.gateway.items(_path(sc), sc.owner)
    return {lang["language"]: lang for t in listed if t["name"] == name for lang in t["languages"]}


@pytest.mark.parametrize(("change", "loc"), [
    ({"name": "Order-Update"}, ("body", "name")),
    ({"name": "x" * 513}, ("body", "name")),
    ({"name": ""}, ("body", "name")),
    ({"category": "PROMO"}, ("body", "category")),
    ({"languages": []}, ("body", "languages")),
    ({"languages": ["english"]}, ("body", "languages", 0)),
    ({"languages": ["en_US", "en_US"]}, ("body", "languages")),
    ({"body": "x" * 1025}, ("body", "body")),
    ({"body": ""}, ("body", "body")),
    ({"body": "{{1}} is at the start"}, ("body", "body")),
    ({"body": "at the end is {{1}}"}, ("body", "body")),
    ({"body": "skips {{2}} here"}, ("body", "body")),
    ({"body": "out of order {{2}} and {{1}} here"}, ("body", "body")),
    ({"body": "not a number {{name}} here"}, ("body", "body")),
    ({"header": "h" * 61}, ("body", "header")),
    ({"header": "two {{1}} {{2}} vars"}, ("body", "header")),
    ({"footer": "f" * 61}, ("body", "footer")),
    ({"footer": "no {{1}} here"}, ("body", "footer")),
    ({"buttons": []}, ("body", "buttons")),
])
def test_every_template_rule_is_a_422_naming_the_field(sc: Scenario, change: dict[str, Any],
                                                       loc: tuple[str | int, ...]) -> None:
    response = sc.gateway.call("POST", _path(sc), sc.owner, json={**VALID, **change})
    assert_invalid(response, *loc)
    # Nothing reached Meta or the store.
    assert sc.gateway.items(_path(sc), sc.owner) == []
    assert not [t for t in sc.gateway.simulator.templates.values() if t.waba_id == sc.org.waba_id]


def test_created_per_language_then_approved_rejected_and_paused_by_webhook(any_sc: Scenario) -> None:
    sc = any_sc
    connect_callback(sc)
    # Meta's review: English approved, then the Portuguese translation rejected (per-name override
    # does not fit languages, so the review is done through the control API per template id).
    created = sc.gateway.ok("POST", _path(sc), sc.owner, 201, json=VALID)
    assert created["body_parameters"] == 2 and created["header"] == "Your order"
    assert {lang["language"]: lang["status"] for lang in created["languages"]} == {"en_US": "PENDING",
                                                                                  "pt_BR": "PENDING"}
    ids = {lang["language"]: lang["meta_template_id"] for lang in created["languages"]}
    at_meta = {t.language: t for t in sc.gateway.simulator.templates.values() if t.waba_id == sc.org.waba_id}
    assert set(at_meta) == {"en_US", "pt_BR"} and at_meta["en_US"].id == ids["en_US"]

    sim(sc, "POST", f"/templates/{ids['en_US']}/review", json={"status": "APPROVED"})
    sim(sc, "POST", f"/templates/{ids['pt_BR']}/review", json={"status": "REJECTED", "reason": "INVALID_FORMAT"})
    eventually(lambda: _languages(sc, "order_update")["pt_BR"]["status"] == "REJECTED", what="rejected")
    languages = _languages(sc, "order_update")
    assert languages["en_US"]["status"] == "APPROVED" and languages["en_US"]["reason"] is None
    assert languages["pt_BR"]["reason"] == "INVALID_FORMAT"

    sim(sc, "POST", f"/templates/{ids['en_US']}/review", json={"status": "PAUSED"})
    eventually(lambda: _languages(sc, "order_update")["en_US"]["status"] == "PAUSED", what="paused")

    # The same name again is a conflict; a delete removes it at Meta and here.
    assert sc.gateway.call("POST", _path(sc), sc.owner, json=VALID).status_code == 409
    assert sc.gateway.call("DELETE", _path(sc, "/order_update"), sc.owner).status_code == 204
    assert sc.gateway.items(_path(sc), sc.owner) == []
    assert not [t for t in sc.gateway.simulator.templates.values() if t.waba_id == sc.org.waba_id]
    assert sc.gateway.call("DELETE", _path(sc, "/order_update"), sc.owner).status_code == 404


def test_automatic_review_after_a_delay(sc: Scenario) -> None:
    connect_callback(sc)
    sim(sc, "PUT", f"/wabas/{sc.org.waba_id}/review", json={
        "delay_s": 0.2, "status": "APPROVED", "by_name": {"promo_blast": {"status": "REJECTED",
                                                                          "reason": "PROMOTIONAL"}}})
    sc.gateway.ok("POST", _path(sc), sc.owner, 201, json={**VALID, "languages": ["en_US"]})
    sc.gateway.ok("POST", _path(sc), sc.owner, 201, json={**VALID, "name": "promo_blast", "category": "MARKETING",
                                                          "languages": ["en_US"]})
    eventually(lambda: _languages(sc, "order_update")["en_US"]["status"] == "APPROVED", what="approved")
    eventually(lambda: _languages(sc, "promo_blast")["en_US"]["status"] == "REJECTED", what="rejected")
    assert _languages(sc, "promo_blast")["en_US"]["reason"] == "PROMOTIONAL"


def test_sync_follows_paging_and_mirrors_meta(sc: Scenario) -> None:
    state = sc.gateway.simulator
    token = sc.org.access_token
    # 60 templates made at Meta directly (Meta's page size is 25): three pages.
    for index in range(60):
        template = state.create_template(token, sc.org.waba_id, {
            "name": f"bulk_{index:02d}", "category": "UTILITY", "language": "en_US",
            "components": [{"type": "BODY", "text": f"Message {index} for {{{{1}}}} today"}]})
        if index % 3 == 0:
            state.review_template(template.id, "APPROVED")
    synced = sc.gateway.ok("POST", _path(sc, "/sync"), sc.owner)
    assert len(synced) == 60
    statuses = {t["name"]: t["languages"][0]["status"] for t in synced}
    assert statuses["bulk_00"] == "APPROVED" and statuses["bulk_01"] == "PENDING"
    assert all(t["body_parameters"] == 1 for t in synced)
    # Removed at Meta: gone here after the next sync.
    state.delete_template(token, sc.org.waba_id, "bulk_59")
    assert len(sc.gateway.ok("POST", _path(sc, "/sync"), sc.owner)) == 59
