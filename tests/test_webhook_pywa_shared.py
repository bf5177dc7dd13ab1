"""Real webhook bodies from another project (pywa), fed signed to the webhook: every one accepted, stored once.

The bodies live outside this project (`../shared/meta-webhooks/pywa/`) and are only read, never copied.
Many share placeholder ids (`wamid.xyzxyz`, `<WHATSAPP_MESSAGE_ID>`), so each is sent as a deep copy with
unique message ids and `entry[].id` rewritten to a WABA linked to the test organization.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meta.simulator.state import new_wamid
from tests.support import Gateway, Org, org_with_waba, query_db

PYWA_DIR = Path(__file__).resolve().parents[2] / "shared" / "meta-webhooks" / "pywa"


def _bodies(obj: Any, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every webhook body in a fixture file: the objects with an `entry` list, however deeply grouped."""
    if not isinstance(obj, dict):
        return
    if isinstance(obj.get("entry"), list):
        yield name, obj
    for key, value in obj.items():
        if key != "entry":
            yield from _bodies(value, f"{name}.{key}")


def _collect() -> list[tuple[str, dict[str, Any]]]:
    if not PYWA_DIR.is_dir():
        return []
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(PYWA_DIR.glob("*.json")):
        found.extend(_bodies(json.loads(path.read_text()), path.stem))
    return found


BODIES = _collect()
pytestmark = pytest.mark.skipif(not BODIES, reason=f"shared webhook bodies not found at {PYWA_DIR}")


def _personalise(body: dict[str, Any], waba_id: str) -> tuple[dict[str, Any], list[str]]:
    """A copy addressed to our WABA, with unique message and status ids; returns it and its message ids."""
    body = copy.deepcopy(body)
    message_ids: list[str] = []
    for entry in body["entry"]:
        entry["id"] = waba_id
        for change in entry.get("changes", []):
            value = change.get("value")
            if not isinstance(value, dict):
                continue
            for key in ("messages", "statuses"):
                for item in value.get(key) or []:
                    if isinstance(item, dict) and "id" in item:
                        item["id"] = new_wamid()
                        if key == "messages":
                            message_ids.append(item["id"])
    return body, message_ids


@pytest.fixture(scope="module")
def org(gateway: Gateway) -> Org:
    return org_with_waba(gateway, numbers=1)


def test_the_shared_corpus_is_substantial() -> None:
    assert len(BODIES) >= 40, [name for name, _ in BODIES]
    assert sum(1 for _, b in BODIES if "messages" in json.dumps(b)) >= 20


@pytest.mark.parametrize(("name", "body"), BODIES, ids=[name for name, _ in BODIES])
def test_shared_webhook_body_is_accepted_and_each_message_stored_once(org: Org, name: str,
                                                                      body: dict[str, Any]) -> None:
    payload, message_ids = _personalise(body, org.waba_id)
    response = org.sender().send_sync(payload)
    assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
    ack = response.json()
    assert ack["messages"] == len(message_ids) and ack["duplicate_messages"] == 0, ack
    # Meta redelivers: still exactly once.
    again = org.sender().send_sync(payload)
    assert again.status_code == 200 and again.json()["messages"] == 0
    assert again.json()["duplicate_messages"] == len(message_ids)
    for wamid in message_ids:
        rows = query_db(org.gateway, "SELECT count(*) FROM inbound_messages WHERE org_id = :o AND wamid = :w",
                        o=org.id, w=wamid)
        assert rows == [(1,)], f"{name}: {wamid} stored {rows[0][0]} times"
