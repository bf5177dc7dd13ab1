"""What the gateway holds for its lifetime: settings, store, secrets, Graph client, routing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from gateway.auth_throttle import AuthThrottle
from gateway.conversation_places import ConversationPlaces
from gateway.principal_cache import TokenCache
from gateway.signing_cache import SigningCache
from meta.graph_client import GraphClient
from store.crypto import SecretBox
from store.db import Database

if TYPE_CHECKING:
    from actors.routing_client import RoutingClient
    from gateway.group_commit import DeliveryGroupCommit
    from gateway.stream_watch import StreamWatch


@dataclass
class Runtime:
    settings: Settings
    db: Database
    secrets: SecretBox
    graph: GraphClient
    routing: RoutingClient
    # Webhook deliveries stored together (group commit).
    intake: DeliveryGroupCommit
    # App secrets verifying webhook deliveries, per organization (dropped when accounts change).
    signing: SigningCache
    # Who each bearer token stands for (`gateway.deps.Principal`), dropped when users or tokens change.
    principals: TokenCache[Any]
    # Failed authentications per client address (429 past the limit).
    auth_throttle: AuthThrottle
    # The open agent event streams, their callers' right to watch re-checked together every few seconds.
    streams: StreamWatch
    # Each conversation's inbox, as learnt from reads and relayed events: actions read nothing first.
    places: ConversationPlaces = field(default_factory=ConversationPlaces)
    # The admin token generated at this start (None when it came from settings or an earlier start).
    generated_admin_token: str | None = field(default=None, repr=False)
