"""Agents: presence, capacity, state, and the live workspace event stream (WebSocket)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from sqlalchemy.ext.asyncio import AsyncSession

from actors.directory import ActorUnavailable, call_while_unavailable
from config.models import AgentSettingsUpdate, PresenceUpdate
from gateway.actor_calls import RESTART_GRACE_S, call_through_restart
from gateway.conversation_places import ConversationPlaces
from gateway.deps import (
    OrgContext,
    OrgId,
    OrgMember,
    RuntimeDep,
    SessionDep,
    Supervisor,
    UserId,
)
from gateway.errors import forbidden, not_found
from gateway.principals import resolve_token
from gateway.runtime import Runtime
from gateway.schemas import AgentOut
from gateway.stream_watch import WatchedStream
from gateway.ws_auth import may_watch, socket_credentials
from store.tables import User

router = APIRouter(prefix="/v1/orgs/{org_id}/agents", tags=["agents"])
log = logging.getLogger(__name__)


async def _org_user(session: AsyncSession, org_id: int, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None or user.org_id != org_id:
        raise not_found("agent")
    return user


def _check_self_or_supervisor(ctx: OrgContext, user_id: int) -> None:
    if not ctx.is_supervisor and not ctx.is_self(user_id):
        raise forbidden("only the agent or a supervisor may do this")


async def agent_call(runtime: Runtime, org_id: int, user_id: int, method: str, *args: Any) -> Any:
    """Call the agent's actor (a view, or setting a value: safe to repeat through a restart)."""
    result = await call_through_restart(lambda: runtime.routing.agent(org_id, user_id), method, *args,
                                        unavailable="the agent's actor is restarting; retry shortly")
    if result is None:
        raise not_found("agent")
    return result


@router.get("/{user_id}", response_model=AgentOut)
async def read_agent(user_id: UserId, ctx: OrgMember, session: SessionDep, runtime: RuntimeDep) -> AgentOut:
    """The agent's live state: presence (and why the router changed it), capacity, open conversations, idle clock
    and the ringing offer. The agent themself or a supervisor. Live changes come over the WebSocket
    `/v1/orgs/{org_id}/agents/{user_id}/events` (its events are listed in README, "Agent workspace API").
    """
    _check_self_or_supervisor(ctx, user_id)
    await _org_user(session, ctx.org.id, user_id)
    return AgentOut(**await agent_call(runtime, ctx.org.id, user_id, "view"))


@router.put("/{user_id}/status", response_model=AgentOut)
async def set_presence(user_id: UserId, body: PresenceUpdate, ctx: OrgMember, session: SessionDep,
                       runtime: RuntimeDep) -> AgentOut:
    """Set the agent's presence (`available`, `away`, `offline`). Going away or offline rescinds a ringing offer
    at once (it is rerouted); open conversations stay. The agent themself or a supervisor.
    """
    _check_self_or_supervisor(ctx, user_id)
    await _org_user(session, ctx.org.id, user_id)
    return AgentOut(**await agent_call(runtime, ctx.org.id, user_id, "set_status", body.status.value))


@router.patch("/{user_id}", response_model=AgentOut)
async def update_agent_settings(user_id: UserId, body: AgentSettingsUpdate, ctx: Supervisor, session: SessionDep,
                                runtime: RuntimeDep) -> AgentOut:
    """Set the agent's capacity (`max_concurrent`, 1..50), counted across all inboxes. Supervisors."""
    await _org_user(session, ctx.org.id, user_id)
    return AgentOut(**await agent_call(runtime, ctx.org.id, user_id, "set_max_concurrent", body.max_concurrent))


@router.websocket("/{user_id}/events")
async def agent_events(
    websocket: WebSocket,
    org_id: OrgId,
    user_id: UserId,
    cursor: Annotated[int | None, Query(ge=0, description="Last event id seen; replay from there")] = None,
) -> None:
    """The agent's live workspace events (the agent themself or a supervisor of the organization).

    Authentication: a browser offers the subprotocols `wa-router.events` and `bearer.<token>`
    (`new WebSocket(url, ["wa-router.events", "bearer." + token])`); the server selects
    `wa-router.events`. Other clients may send `Authorization: Bearer <token>`. A token in the URL is
    not accepted (URLs end up in access logs). A refused handshake is HTTP 403.

    Frames are JSON objects with a `type`. The first is `{"type": "hello", "cursor": N, "agent": {...}}`
    (`agent` as `GET /agents/{user_id}` answers it; `cursor` the id of the newest event). Then each event
    as it is committed, with its `id` (increasing: the cursor) and `at`:

    - `offer`: a conversation rings: `offer_id`, `transaction_id`, `inbox_id`, `inbox_name`, `customer`
      (`id`, `user_id`, `wa_id`, `username`, `name`), `first_message`, `waiting_since`, `expires_at`
      (an offer shown again after the agent's restart carries `offer_id`, `transaction_id`, `inbox_id`,
      `expires_at`).
    - `offer_rescinded`: the offer is over: `offer_id`, `transaction_id`, `inbox_id`, `reason` (`missed`,
      `declined`, `rescinded`, `expired`, `withdrawn by the inbox`, `agent away`, `agent offline`).
    - `assigned`: a conversation is the agent's: `transaction_id`, `inbox_id`, `kind` (`accepted`,
      `claimed`, `assigned` for WhatsApp Back, `reconciled`), the conversation's summary as in `offer`
      (`first_message` null when the conversation closed first and its message opened the next one).
    - `transferred`: a supervisor moved a conversation: to the agent (as `assigned`, `kind: transferred`)
      or away from them (`transaction_id`, `inbox_id`, `reason`, `direction: "away"`).
    - `transaction_closed`: `transaction_id`, `inbox_id`, `reason`.
    - `message`: `transaction_id`, `inbox_id`, `message` (as in `GET /transactions/{id}/messages`:
      the customer's with `direction: "inbound"`, the agent's own replies echoed with `"outbound"`).
    - `message_status`: Meta's delivery status of a reply: `transaction_id`, `message_id`, `wamid`,
      `status` (`sent`, `delivered`, `read`, `played`, `failed`), `status_at`, `error` (Meta's code,
      title and details, for `failed`).
    - `status`: the agent's presence changed: `status`, `reason` (set when the router changed it, e.g.
      `missed 3 offers in a row`).

    After a dropped connection, reconnect with `?cursor=<the last id received>`: the events after it are
    sent first (a client keeps its own cursor rather than the new hello's). Without `cursor`, only new
    events are sent. The agent's actor restarting does not close the socket: its events go on once the actor is
    back; one not back within 10 s closes it with code 1013 (try again later).
    """
    runtime: Runtime = websocket.app.state.runtime
    credentials = socket_credentials(websocket)
    address = websocket.client.host if websocket.client else None
    if credentials.token and runtime.auth_throttle.retry_after(address) is not None:
        await websocket.close(code=1008)  # too many failed authentications from this address
        return
    async with runtime.db.sessions() as session:
        principal = (await resolve_token(session, credentials.token, runtime.principals)
                     if credentials.token else None)
        user = await session.get(User, user_id)
    if credentials.token and principal is None:
        runtime.auth_throttle.failed(address)
    if not may_watch(principal, user, org_id, user_id):
        # Refused before the handshake completes: the client sees HTTP 403.
        await websocket.close(code=1008)
        return
    def proxy() -> Any:
        return runtime.routing.agent(org_id, user_id)

    await websocket.accept(subprotocol=credentials.subprotocol)
    watched: WatchedStream | None = None
    try:
        # An agent's actor restarting (a crash, a node lost) is waited out, as the API's calls do: the workspace
        # gets its hello a few seconds late rather than a closed socket.
        last_id = await call_while_unavailable(proxy, "last_event_id", within_s=RESTART_GRACE_S)
        view = await call_while_unavailable(proxy, "view", within_s=RESTART_GRACE_S)
        await websocket.send_json({"type": "hello", "cursor": last_id, "agent": view})
        position = cursor if cursor is not None else last_id
        receiver = asyncio.create_task(_drain(websocket))
        sender = asyncio.create_task(_send_events(websocket, proxy, position, org_id, runtime.places))
        # The caller's right is not only the handshake's: a demoted, deleted or revoked caller is dropped.
        watched = runtime.streams.add(credentials.token, org_id, user_id)
        checker = asyncio.create_task(_close_once_refused(websocket, watched))
        await asyncio.wait({sender, receiver, checker}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sender, receiver, checker):
            task.cancel()
        await asyncio.gather(sender, receiver, checker, return_exceptions=True)
        ended = None if sender.cancelled() else sender.exception()
        if isinstance(ended, ActorUnavailable):
            raise ended
        if ended is not None and not isinstance(ended, WebSocketDisconnect | RuntimeError):
            # Not a client gone (sending on a closed socket raises those): say why the workspace was closed.
            log.error("agent %s:%s: workspace stream ended: %r", org_id, user_id, ended)
            with contextlib.suppress(Exception):
                await websocket.close(code=1011)
    except WebSocketDisconnect:
        pass
    except ActorUnavailable:
        # Still restarting after the wait: "try again later" (the client reconnects from its cursor), not a normal
        # closure.
        with contextlib.suppress(Exception):
            await websocket.close(code=1013)
    finally:
        if watched is not None:
            runtime.streams.remove(watched)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _close_once_refused(websocket: WebSocket, watched: WatchedStream) -> None:
    """Close with 1008 (policy violation) once the gateway's re-check finds the caller may no longer watch."""
    await watched.refused.wait()
    await websocket.close(code=1008, reason="no longer allowed to watch this agent")


async def _send_events(websocket: WebSocket, proxy: Callable[[], Any], position: int, org_id: int,
                       places: ConversationPlaces) -> None:
    """The agent's events after `position`, one frame each, stream after stream (each ends by itself); the
    conversations' inboxes they name are kept for the actions that follow (an accept after its offer).

    The agent's actor restarting (a crash, a node lost) does not end the socket: it is waited out as the handshake
    waits for it (`proxy()` is asked anew, so a handle of one stopped for good is replaced), and the next stream is
    opened from the cursor. Still unavailable after the API's restart grace, ActorUnavailable ends it (the client
    reconnects later).
    """
    while True:
        try:
            async for events in proxy().stream("stream_events", position):
                for event in events:
                    places.learn_from_event(org_id, event)
                    await websocket.send_json(event)
                    position = event["id"]
        except ActorUnavailable:
            await call_while_unavailable(proxy, "last_event_id", within_s=RESTART_GRACE_S)


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client frames until the client goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
