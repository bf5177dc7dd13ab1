"""The OpenAPI document tells the truth: the refusals the routes really answer, in their one shape (ErrorOut),
and null offered in a request only where an explicit null is accepted."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from config.messaging import CustomerRef, TemplateCreate, TemplateReply, TextReply
from config.models import InboxUpdate, TokenCreate, TransferRequest, UserUpdate
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


# ---------------------------------------------------------------- explicit null in request bodies


def _request_schemas(spec: dict[str, Any]) -> set[str]:
    """The component schemas a request body may carry (directly or nested)."""
    components = spec["components"]["schemas"]
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                if name not in found:
                    found.add(name)
                    walk(components[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for operations in spec["paths"].values():
        for operation in operations.values():
            walk(operation.get("requestBody"))
    return found


def _allows_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(option.get("type") == "null" for option in schema.get("anyOf", []))


# Each request field whose schema offers null, and a body in which it is an explicit null: all accepted.
_NULL_ACCEPTED: dict[tuple[str, str], tuple[type[BaseModel], dict[str, Any]]] = {
    ("CustomerRef", "wa_id"): (CustomerRef, {"wa_id": None, "user_id": "US.1"}),
    ("CustomerRef", "user_id"): (CustomerRef, {"wa_id": "15550001111", "user_id": None}),
    ("TemplateCreate", "header"): (TemplateCreate, {"name": "t", "category": "UTILITY", "languages": ["en"],
                                                    "body": "b", "header": None}),
    ("TemplateCreate", "footer"): (TemplateCreate, {"name": "t", "category": "UTILITY", "languages": ["en"],
                                                    "body": "b", "footer": None}),
    ("TemplateReply", "reply_to"): (TemplateReply, {"type": "template", "template": {"name": "t", "language": "en"},
                                                    "reply_to": None}),
    ("TextReply", "reply_to"): (TextReply, {"type": "text", "text": "hi", "reply_to": None}),
    ("TokenCreate", "expires_in_s"): (TokenCreate, {"expires_in_s": None}),
    ("TransferRequest", "user_id"): (TransferRequest, {"user_id": None, "to_queue": True}),
}


def test_a_request_field_offers_null_only_where_an_explicit_null_is_accepted() -> None:
    spec = _spec()
    components = spec["components"]["schemas"]
    nullable = {(name, prop) for name in _request_schemas(spec)
                for prop, schema in components[name].get("properties", {}).items() if _allows_null(schema)}
    assert nullable == set(_NULL_ACCEPTED)
    for (name, prop), (model, body) in _NULL_ACCEPTED.items():
        assert getattr(model.model_validate(body), prop) is None, (name, prop)
    # PATCH bodies refuse an explicit null (omit the field to keep it): their schemas offer none.
    for model, name in ((UserUpdate, "UserUpdate"), (InboxUpdate, "InboxUpdate")):
        properties = components[name]["properties"]
        assert properties and not any(_allows_null(schema) for schema in properties.values()), name
        for prop in properties:
            with pytest.raises(ValidationError, match="must not be null"):
                model.model_validate({prop: None})
