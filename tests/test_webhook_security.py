"""The public webhook tells nothing about organizations, verifies before parsing, caches its secrets
correctly, and stores text with lone surrogates instead of failing the delivery."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.signing_cache import SigningCache, SigningSecret
from meta.signature import HEADER, sign
from meta.simulator import payloads
from tests.support import (
    Gateway,
    add_simulated_waba,
    create_org,
    link_waba,
    org_with_waba,
    query_db,
    text_from,
)


def _signed(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", HEADER: sign(body, secret)}


def test_real_and_unknown_organizations_answer_a_bad_signature_identically(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    lonely = create_org(gateway)  # no WABA
    wrong = _signed(b"x", "not-a-secret")[HEADER]
    for body in (b"{not json", b"{}", b'{"entry": []}', json.dumps(text_from(org, 0, "15551230001")).encode()):
        answers = []
        for org_id in (org.id, lonely.id, 987654321):
            response = gateway.http.post(f"/webhooks/whatsapp/{org_id}", content=body,
                                         headers={"Content-Type": "application/json", HEADER: wrong})
            answers.append((response.status_code, response.content))
        # Parsed only once the signature verifies: a real organization's answer tells nothing more.
        assert answers == [(403, b'{"detail":"signature does not match"}')] * 3, (body, answers)


def test_signed_bad_json_is_still_a_400_for_the_signer(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    response = gateway.http.post(f"/webhooks/whatsapp/{org.id}", content=b"{not json",
                                 headers=_signed(b"{not json", org.app_secret))
    assert response.status_code == 400


def test_linking_and_unlinking_take_effect_at_once_despite_the_secret_cache(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    assert org.sender().send_sync(text_from(org, 0, "15551230002")).status_code == 200  # cached now
    # A second WABA, another secret: its deliveries verify immediately, not after the cache's TTL.
    second = add_simulated_waba(gateway)
    first_waba = (org.waba_id, org.access_token, org.app_secret, org.numbers)
    link_waba(org, second)
    assert org.sender().send_sync(text_from(org, 0, "15551230003")).status_code == 200
    # Unlinked (no inbox uses it): its secret verifies nothing any more, at once.
    gateway.ok("DELETE", org.path(f"/whatsapp/accounts/{org.waba_id}"), org.owner_token, 204)
    assert org.sender().send_sync(text_from(org, 0, "15551230004")).status_code == 403
    org.waba_id, org.access_token, org.app_secret, org.numbers = first_waba
    assert org.sender().send_sync(text_from(org, 0, "15551230005")).status_code == 200


def test_signing_cache_reads_once_per_ttl_and_again_after_invalidate() -> None:
    loads: list[int] = []

    async def load(org_id: int) -> list[SigningSecret]:
        loads.append(org_id)
        return [SigningSecret(org_id=org_id, waba_id="1", app_secret="s3cret")]

    async def run() -> None:
        cache = SigningCache(load, ttl_s=60)
        assert (await cache.secrets_for(1))[0].app_secret == "s3cret"
        await cache.secrets_for(1)
        assert loads == [1]
        cache.invalidate()
        await cache.secrets_for(1)
        assert loads == [1, 1]
        expired = SigningCache(load, ttl_s=0)
        await expired.secrets_for(2)
        await expired.secrets_for(2)
        assert loads == [1, 1, 2, 2]

    asyncio.run(run())
    assert "s3cret" not in repr(SigningSecret(org_id=1, waba_id="1", app_secret="s3cret"))


def test_deliveries_that_find_the_signing_secrets_expired_together_wait_for_one_read() -> None:
    """Concurrent deliveries to one endpoint share the store read of its secrets; one that is cancelled does not
    cancel the others'; after an invalidation during a read, later callers read anew and the stale read is not
    kept."""
    loads: list[int] = []
    release = asyncio.Event()

    async def load(org_id: int) -> list[SigningSecret]:
        loads.append(org_id)
        read = len(loads)
        await release.wait()
        return [SigningSecret(org_id=org_id, waba_id="1", app_secret=f"secret {read}")]

    async def run() -> None:
        cache = SigningCache(load, ttl_s=60)
        waiting = [asyncio.ensure_future(cache.secrets_for(1)) for _ in range(5)]
        await asyncio.sleep(0.01)
        waiting[0].cancel()
        release.set()
        answers = await asyncio.gather(*waiting[1:])
        assert loads == [1] and {a[0].app_secret for a in answers} == {"secret 1"}

        release.clear()
        cache.invalidate()
        stale = asyncio.ensure_future(cache.secrets_for(2))
        await asyncio.sleep(0.01)
        cache.invalidate()  # the account changed while its secrets were read
        fresh = asyncio.ensure_future(cache.secrets_for(2))
        await asyncio.sleep(0.01)
        release.set()
        assert (await stale)[0].app_secret == "secret 2" and (await fresh)[0].app_secret == "secret 3"
        assert (await cache.secrets_for(2))[0].app_secret == "secret 3"
        assert loads == [1, 2, 2]

    asyncio.run(run())


@pytest.mark.parametrize("name", ["\ud800", "a\udfffb", "\ud83d"])
def test_lone_surrogates_in_signed_webhook_text_are_stored_not_a_500(any_gateway: Gateway, name: str) -> None:
    org = org_with_waba(any_gateway)
    customer = "15551230099"
    payload = payloads.inbound_message(org.waba_id, org.numbers[0], "+1 555 0000000", customer, name,
                                       type="text", body=f"text {name}")
    body = json.dumps(payload).encode()  # ASCII: the surrogate travels as a \\u escape, as Meta's would
    assert b"\\ud" in body
    response = any_gateway.http.post(f"/webhooks/whatsapp/{org.id}", content=body,
                                     headers=_signed(body, org.app_secret))
    assert response.status_code == 200, response.text
    assert response.json()["messages"] == 1
    stored = query_db(any_gateway, "SELECT customer_name, summary FROM inbound_messages WHERE org_id = :o", o=org.id)
    expected = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)  # one U+FFFD each
    assert stored == [(expected, f"text {expected}")]
    assert "\ufffd" in stored[0][0]
    names = query_db(any_gateway, "SELECT name FROM customers WHERE org_id = :o", o=org.id)
    assert names == [(expected,)]
