"""Schemathesis against the gateway's own /openapi.json, called with an organization owner's token.

Every operation is called with generated requests, valid and invalid: no answer is a server error, every
status is one the spec documents for the operation, and every body conforms to the documented schema.
`make test` runs a few examples per operation; `make fuzz` (the `fuzz` marker) runs many more.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Gateway, add_simulated_waba, auth, create_org, eventually, link_waba, text_from

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
QUICK_EXAMPLES = 2
FUZZ_EXAMPLES = int(os.environ.get("WA_ROUTER_FUZZ_EXAMPLES", "200"))


@dataclass
class Target:
    gateway: Gateway
    token: str
    # Real ids of the organization: generated ids alone would almost always name nothing (404 before
    # any handler runs), so the organization's id is always the real one and the others every other time.
    ids: dict[str, int | str]


@pytest.fixture(scope="module")
def target(gateway: Gateway) -> Iterator[Target]:
    """One organization with a WhatsApp account, an inbox with an agent and a live conversation."""
    org = create_org(gateway)
    link_waba(org, add_simulated_waba(gateway))
    agent_id, _ = org.add_user("member")
    inbox = gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201, json={
        "name": "Fuzzed", "phone_number_id": org.numbers[0], "assignment_mode": "manual",
        "agents": [{"user_id": agent_id, "proficiency": 1}]})
    assert org.sender().send_sync(text_from(org, 0, "15550009999", "hi")).status_code == 200
    (tx,) = eventually(lambda: gateway.items(org.path("/transactions"), org.owner_token, inbox_id=inbox["id"]))
    tx_id = tx["id"]
    # Generated requests may edit or delete what this organization has (that is the point); should one
    # guess and revoke the owner's token, the 401s that follow are documented answers too.
    yield Target(gateway, org.owner_token, {
        "org_id": org.id, "inbox_id": inbox["id"], "user_id": agent_id, "tx_id": tx_id, "waba_id": org.waba_id,
        "phone_number_id": org.numbers[0]})


@pytest.fixture(scope="module")
def api_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(f"{target.gateway.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


# Headers that frame the HTTP message itself: a generated value makes the request unparseable, and the
# HTTP server (not the application, which never sees it) answers in plain text. Not part of the API.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}


def _check(case: Any, target: Target) -> None:
    if case.headers:
        for name in [n for n in case.headers if n.strip().lower() in _FRAMING]:
            del case.headers[name]
    parameters = case.path_parameters or {}
    for name, generated in list(parameters.items()):
        if name in target.ids and (name == "org_id" or zlib.crc32(str(generated).encode()) % 2 == 0):
            parameters[name] = target.ids[name]
    # Meta's deliveries are signed, not authenticated by bearer tokens: the header is harmless there.
    case.call_and_validate(base_url=target.gateway.url, headers=auth(target.token), checks=CHECKS)


@schema.parametrize()
@settings(max_examples=QUICK_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi(case: Any, target: Target) -> None:
    _check(case, target)


@pytest.mark.fuzz
@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_at_length(case: Any, target: Target) -> None:
    _check(case, target)
