from tests.support import Gateway, org_with_waba


def test_link_and_create_inbox(any_gateway: Gateway) -> None:
    org = org_with_waba(any_gateway)
    inbox = any_gateway.ok("POST", org.path("/inboxes"), org.owner_token, 201,
                           json={"name": "Sales", "phone_number_id": org.numbers[0]})
    assert inbox["assignment_mode"] == "round_robin"
