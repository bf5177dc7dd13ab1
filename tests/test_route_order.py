"""The message path's routes (Meta's deliveries, the answers to offers and conversations, agents' event sockets) are
matched first, as routes are tried one by one in order; that changes which route answers no request, and the API
docs keep their order."""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match

from config.settings import Settings
from gateway import health, metrics
from gateway.app import create_app
from gateway.routers import api_routers


def _documented_order() -> FastAPI:
    """The routes composed in the order the docs present them (`api_routers`)."""
    app = FastAPI()
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in api_routers:
        app.include_router(router)
    return app


def _answering(app: FastAPI, path: str, method: str) -> tuple[Match, Any]:
    """(How the first route that takes the request matches, what answers it): a full match's endpoint, else the
    first partial match's route (a 405)."""
    kind = "websocket" if method == "WS" else "http"
    scope: dict[str, Any] = {"type": kind, "path": path, "method": "GET" if method == "WS" else method,
                             "root_path": "", "headers": [], "query_string": b""}
    partial = None
    for route in app.router.routes:
        match, child = route.matches(dict(scope))
        if match == Match.FULL:
            return match, child.get("endpoint")
        if match == Match.PARTIAL and partial is None:
            partial = child.get("endpoint")
    return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, None)


def _app() -> FastAPI:
    return create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", admin_token=secrets.token_urlsafe(32)))


def test_every_path_is_answered_by_the_route_that_answered_it_in_the_documented_order() -> None:
    app, documented = _app(), _documented_order()
    requests = set()
    for router in api_routers:
        for route in router.routes:
            methods = getattr(route, "methods", None) or {"WS"}
            for value in ("1", "abc", "me", "transactions", "events", "queue"):
                path = re.sub(r"\{[^}]+\}", value, route.path)  # type: ignore[attr-defined]
                requests |= {(path, method) for method in [*methods, "GET", "POST", "DELETE", "PUT", "PATCH"]}
    assert len(requests) > 500
    for path, method in sorted(requests):
        assert _answering(app, path, method) == _answering(documented, path, method), (method, path)


def test_a_delivery_is_matched_among_the_first_routes() -> None:
    routes = _app().router.routes
    delivery = {"type": "http", "path": "/webhooks/whatsapp/7", "method": "POST", "root_path": "", "headers": [],
                "query_string": b""}
    first = next(i for i, route in enumerate(routes) if route.matches(dict(delivery))[0] == Match.FULL)
    assert first <= 3  # after the health and metrics routes at most


def test_the_docs_keep_their_order() -> None:
    spec = _app().openapi()
    tags = [tag["name"] for tag in spec["tags"]]
    assert tags[:2] == ["organizations", "users"] and tags[-1] == "meta webhook"
    assert tags == list(dict.fromkeys(t for router in api_routers for t in router.tags))
