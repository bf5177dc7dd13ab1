"""Every router of the gateway, composed in one place, with the refusals their routes document."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute

from gateway.routers import (
    agents,
    inboxes,
    me,
    messages,
    orgs,
    stats,
    templates,
    tokens,
    transactions,
    users,
    webhooks,
    whatsapp,
)
from gateway.schemas import ErrorOut

api_routers: list[APIRouter] = [
    me.router,
    orgs.router,
    users.router,
    tokens.router,
    whatsapp.router,
    templates.router,
    inboxes.router,
    stats.router,
    agents.router,
    transactions.router,
    messages.router,
    webhooks.router,
]

_REFUSALS: dict[int, str] = {
    400: "The body is not JSON (a webhook's: not a WhatsApp delivery)",
    401: "No valid credential (bearer token; for Meta's deliveries, the signature)",
    403: "Authenticated, but not allowed to do this",
    404: "No such resource in this organization (another organization's look the same)",
    409: "Conflicts with the current state",
    413: "The request body is too large",
    422: "Invalid input: `detail` names each offending field",
    429: "Too many failed authentications from this address (see Retry-After)",
    502: "Meta's Graph API could not be reached",
    503: "The store or an actor is briefly unavailable: retry (see Retry-After)",
}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _refusals(router: APIRouter, route: APIRoute) -> set[int]:
    """The statuses a route of `router` may answer besides its success, as the code raises them."""
    writes = bool((route.methods or set()) & _WRITES)
    if router is webhooks.router:
        return {403, 404, 422, 503} | ({400, 401, 413} if writes else set())
    found = {401, 403, 404, 422, 429, 503}
    if writes:
        found |= {400, 409, 413}
    if router in (whatsapp.router, templates.router) and writes:
        found.add(502)
    return found


def _document_refusals(router: APIRouter) -> None:
    # Before the routers are included: each inclusion reads a route's `responses` as it then is.
    for route in router.routes:
        if isinstance(route, APIRoute):
            documented: dict[int | str, dict[str, Any]] = route.responses
            json_route = not (isinstance(route.response_class, type)
                              and issubclass(route.response_class, PlainTextResponse))
            for status in sorted(_refusals(router, route)):
                # A route answering plain text still refuses in JSON: say so (ErrorOut is a component already).
                documented.setdefault(status, {"model": ErrorOut, "description": _REFUSALS[status]} if json_route
                                      else {"description": _REFUSALS[status], "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/ErrorOut"}}}})


for _router in api_routers:
    _document_refusals(_router)

# The routes a request is matched against first: the message path's (Meta's deliveries, the answers to offers and
# conversations, agents' event sockets). Matching tries the routes one by one in order, ~0.15 ms for a delivery
# behind all the others; the API docs keep `api_routers`' order (`api_tags`).
message_path_routers: list[APIRouter] = [webhooks.router, transactions.router, agents.router]
api_tags: list[str] = list(dict.fromkeys(tag for router in api_routers for tag in router.tags if isinstance(tag, str)))
