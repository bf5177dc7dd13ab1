"""Who may read an agent's event stream, and how a WebSocket client presents its token.

Browsers cannot set headers on a WebSocket, and a token in the URL ends up in access logs: a browser
offers two subprotocols, `wa-router.events` and `bearer.<token>`, and the server selects the first.
Other clients may send `Authorization: Bearer <token>` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import WebSocket

from config.models import Role
from gateway.principals import Principal
from store.tables import User

EVENTS_SUBPROTOCOL = "wa-router.events"
BEARER_SUBPROTOCOL_PREFIX = "bearer."


@dataclass(frozen=True)
class SocketCredentials:
    token: str | None
    # The subprotocol the server selects on accept (None: the client offered none we speak).
    subprotocol: str | None


def socket_credentials(websocket: WebSocket) -> SocketCredentials:
    """The token a WebSocket client presented: the Authorization header, else a `bearer.` subprotocol."""
    offered = [str(p).strip() for p in websocket.scope.get("subprotocols", [])]
    subprotocol = EVENTS_SUBPROTOCOL if EVENTS_SUBPROTOCOL in offered else None
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return SocketCredentials(token=header[7:].strip() or None, subprotocol=subprotocol)
    for protocol in offered:
        # Only with our own subprotocol offered: the server must select one the client offered,
        # and the token itself must never be echoed back as the selected one.
        if protocol.lower().startswith(BEARER_SUBPROTOCOL_PREFIX) and subprotocol is not None:
            return SocketCredentials(token=protocol[len(BEARER_SUBPROTOCOL_PREFIX):] or None, subprotocol=subprotocol)
    return SocketCredentials(token=None, subprotocol=subprotocol)


def may_watch(principal: Principal | None, watched: User | None, org_id: int, user_id: int) -> bool:
    """The agent themself, a supervisor of their organization, or the platform admin."""
    if principal is None or watched is None or watched.org_id != org_id:
        return False
    if principal.user is None:
        return True
    caller = principal.user
    return caller.org_id == org_id and (caller.id == user_id or Role(caller.role).is_supervisor)
