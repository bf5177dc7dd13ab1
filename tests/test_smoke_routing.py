import json

from websockets.sync.client import connect

from tests.support import Gateway, auth, eventually, org_with_waba, text_from


def test_offer_accept_close(gateway: Gateway) -> None:
    org = org_with_waba(gateway)
    a1, t1 = org.add_user()
    gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                       json={"name": "Sales", "phone_number_id": org.numbers[0], "agents": [{"user_id": a1}]})
    gateway.ok("PUT", org.path(f"/agents/{a1}/status"), t1, json={"status": "available"})
    ws_url = gateway.url.replace("http", "ws") + org.path(f"/agents/{a1}/events")
    with connect(ws_url, additional_headers=auth(t1)) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello"
        r = org.sender().send_sync(text_from(org, 0, "15550001", "hi there"))
        assert r.status_code == 200, r.text
        offer = json.loads(ws.recv(timeout=15))
        assert offer["type"] == "offer", offer
        tx = offer["transaction_id"]
        accepted = gateway.ok("POST", org.path(f"/transactions/{tx}/accept"), t1)
        assert accepted["state"] == "assigned" and accepted["agent_id"] == a1
        assigned = json.loads(ws.recv(timeout=10))
        assert assigned["type"] == "assigned"
        org.sender().send_sync(text_from(org, 0, "15550001", "second"))
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "message" and msg["message"]["summary"] == "second"
    closed = gateway.ok("POST", org.path(f"/transactions/{tx}/close"), t1)
    assert closed["state"] == "closed"
    agent = gateway.ok("GET", org.path(f"/agents/{a1}"), t1)
    assert agent["active_transactions"] == []
    events = gateway.items(org.path(f"/transactions/{tx}/events"), org.owner_token)
    assert [e["kind"] for e in events] == ["queued", "offered", "accepted", "closed"]
    eventually(lambda: True)
