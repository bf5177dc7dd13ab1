"""The OpenAPI document lists the refusals the routes really answer, in the one shape they have (ErrorOut)."""

from __future__ import annotations

import secrets
from typing import Any

from config.settings import Settings
from gateway.app import create_app

_ERROR = {"$ref": "#/components/schemas/ErrorOut"}


def _spec() -> dict[str, Any]:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", admin_token=secrets.token_urlsafe(32)))
    spec: dict[str, Any] = app.openapi()
    return spec


def test_every_api_operation_documents_its_refusals_as_json_errors() -> None:
    spec = _spec()
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  if path.startswith(("/v1/", "/webhooks/")) for method, op in ops.items()]
    assert len(operations) > 50
    for path, method, op in operations:
        responses = op["responses"]
        expected = {"403", "404", "422", "503"}
        if path.startswith("/v1/"):
            expected |= {"401", "429"}
        if method in ("post", "put", "patch", "delete"):
            expected |= {"400", "401", "413"} | ({"409"} if path.startswith("/v1/") else set())
        missing = expected - set(responses)
        assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
        for status in expected:
            assert responses[status]["content"]["application/json"]["schema"] == _ERROR, (method, path, status)
    # The subscription check answers its challenge in plain text, but refuses in JSON like every route.
    verify = spec["paths"]["/webhooks/whatsapp/{org_id}"]["get"]["responses"]
    assert "text/plain" in verify["200"]["content"] and verify["403"]["content"]["application/json"]["schema"] == _ERROR


def test_the_error_shape_takes_a_message_or_the_offending_fields() -> None:
    error = _spec()["components"]["schemas"]["ErrorOut"]
    detail = error["properties"]["detail"]["anyOf"]
    assert {"type": "string"} in detail
    assert any(option.get("type") == "array" for option in detail)
    assert error.get("additionalProperties", True) is not False  # some refusals add fields (e.g. conflicts)
