"""Every request body is bounded (413 before reading when declared too large), and refusals never echo
large or unencodable input: a lone surrogate or a NaN in a JSON body is a 422 naming the field, not a 500."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from config.settings import Settings
from gateway.errors import validation_detail
from tests.support import Gateway, assert_invalid, auth, create_org, unique

MiB = 1024 * 1024


def _raw_request(gateway: Gateway, head: str) -> bytes:
    """Send only a request head (no body) and return what the server answers within 10 s."""
    address = urlsplit(gateway.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(head.encode())
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return received


def test_declared_oversized_bodies_are_refused_before_reading(gateway: Gateway) -> None:
    org = create_org(gateway)
    for path, token in (("/v1/orgs", gateway.admin_token), (org.path("/users"), org.owner_token),
                        (f"/webhooks/whatsapp/{org.id}", None)):
        authorization = f"Authorization: Bearer {token}\r\n" if token else ""
        # No body is sent: a server that waited to read it would answer nothing within the timeout.
        answer = _raw_request(gateway, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       f"{authorization}Content-Length: {50 * MiB}\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])


def test_streamed_oversized_bodies_are_counted_and_refused(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(3 * 64):
            yield b"x" * 16384  # 3 MiB in all, no Content-Length (chunked)
        yield b'"}'

    response = gateway.http.post("/v1/orgs", content=chunks(), headers={**auth(gateway.admin_token),
                                                                          "Content-Type": "application/json"})
    assert response.status_code == 413, response.text[:200]
    assert response.json() == {"detail": f"body larger than {MiB} bytes"}


def test_a_large_invalid_value_is_not_echoed(gateway: Gateway) -> None:
    big = "n" * (MiB // 2)
    response = gateway.call("POST", "/v1/orgs", gateway.admin_token,
                            json={"name": big, "owner": {"name": "Owner", "email": f"{unique('o')}@example.com"}})
    assert_invalid(response, "body", "name")
    assert len(response.content) < 2000 and big[:100] not in response.text


def test_lone_surrogate_in_any_json_body_is_a_422_naming_the_field(gateway: Gateway) -> None:
    org = create_org(gateway)
    body = '{"name": "Ann \\ud800", "email": "ann@example.com", "role": "member", "licenses": []}'
    response = gateway.call("POST", org.path("/users"), org.owner_token, content=body,
                            headers={"Content-Type": "application/json"})
    assert_invalid(response, "body", "name")
    nested = '{"name": "Org", "owner": {"name": "\\udfff", "email": "x@example.com"}}'
    response = gateway.call("POST", "/v1/orgs", gateway.admin_token, content=nested)
    assert_invalid(response, "body", "owner", "name")
    # A valid surrogate pair (an emoji, as ASCII JSON escapes it) is ordinary text.
    email = f"{unique('a')}@example.com"
    pair = '{"name": "Ann \\ud83d\\ude00", "email": "' + email + '", "role": "member", "licenses": []}'
    created = gateway.ok("POST", org.path("/users"), org.owner_token, 201, content=pair,
                         headers={"Content-Type": "application/json"})
    assert created["name"] == "Ann \U0001f600"


def test_values_json_cannot_carry_are_not_echoed(gateway: Gateway) -> None:
    # Python's JSON parser accepts NaN; echoing it back would be invalid JSON (a 500 before).
    response = gateway.call("POST", "/v1/orgs", gateway.admin_token, content='{"name": NaN, "owner": 1}',
                            headers={"Content-Type": "application/json"})
    assert_invalid(response, "body", "name")
    assert "NaN" not in response.text


def test_validation_detail_keeps_loc_msg_type_and_only_small_encodable_input() -> None:
    detail = validation_detail([
        {"loc": ("body", "a"), "msg": "bad", "type": "string_type", "input": "\ud800", "ctx": {"x": object()}},
        {"loc": ("body", "b"), "msg": "bad", "type": "string_too_long", "input": "y" * 10_000},
        {"loc": ("body", "c"), "msg": "bad", "type": "int_type", "input": 12},
        {"loc": ("body", "d"), "msg": "bad \ud800" + "m" * 10_000, "type": "float", "input": float("inf")},
    ])
    assert detail[0] == {"loc": ["body", "a"], "msg": "bad", "type": "string_type"}
    assert "input" not in detail[1]
    assert detail[2]["input"] == 12
    assert "input" not in detail[3] and len(detail[3]["msg"]) < 400 and "\ud800" not in detail[3]["msg"]


def test_body_limit_is_a_setting() -> None:
    assert Settings(max_body_bytes=2048).max_body_bytes == 2048
    assert Settings().max_body_bytes == MiB


def test_api_bodies_are_not_read_before_authentication(gateway: Gateway) -> None:
    org = create_org(gateway)
    for token in ("war_not-a-token", None):
        authorization = f"Authorization: Bearer {token}\r\n" if token else ""
        # A body is announced (within the limit) but never sent: only an answer given unread arrives.
        answer = _raw_request(gateway, f"POST {org.path('/users')} HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Type: application/json\r\n{authorization}Content-Length: 1000\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # A refused caller learns nothing from the body either: bad text is not even looked at.
    response = gateway.call("POST", org.path("/users"), "war_not-a-token", content='{"name": "\\ud800"}',
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and response.json() == {"detail": "invalid bearer token"}


def test_a_body_without_the_json_content_type_is_a_415_naming_the_header(gateway: Gateway) -> None:
    org = create_org(gateway)
    body = b'{"name": "Ada", "email": "ada@x.test", "role": "member", "licenses": ["phone_system"]}'
    for headers, got in (({}, "none"), ({"content-type": "text/plain"}, "'text/plain'"),
                         ({"content-type": "application/x-www-form-urlencoded"},
                          "'application/x-www-form-urlencoded'")):
        answer = gateway.call("POST", org.path("/users"), org.owner_token, content=body, headers=headers)
        assert answer.status_code == 415, answer.text
        (detail,) = answer.json()["detail"]
        assert detail["loc"] == ["header", "content-type"]
        assert "Content-Type: application/json" in detail["msg"] and f"(got {got})" in detail["msg"], detail
    # The same body with the header is taken; a JSON body that is not an object stays a 422 about the body.
    created = gateway.call("POST", org.path("/users"), org.owner_token, content=body,
                           headers={"content-type": "application/json; charset=utf-8"})
    assert created.status_code == 201, created.text
    wrong = gateway.call("POST", org.path("/users"), org.owner_token, content=b'"Ada"',
                         headers={"content-type": "application/json"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body"], wrong.text
    # No body at all is a missing body, whatever the header.
    missing = gateway.call("POST", org.path("/users"), org.owner_token)
    assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "missing", missing.text
