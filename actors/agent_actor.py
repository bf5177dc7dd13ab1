"""AgentActor: owns one agent's presence, capacity, held offers, active transactions and event stream.

A plain class: `actors.ray_directory.RayDirectory` deploys it as the named Ray actor `agent:<org>:<user>`,
activated when first needed. It is composed of the parts of `actors.agent_core` (state, activation, the
snapshot inboxes route on, the event log every step commits through), `actors.agent_offers` (offers as
reservations, assignments, holds that lapse by themselves), `actors.agent_presence` (view, status, capacity,
telling the inboxes, idle deactivation) and `actors.agent_stream` (the event stream's readers).

Every step runs in the default concurrency group, under one lock: decide, commit one store
transaction (state and events together) or read what an inbox's commit wrote on the stream, then
change memory, then tell the inboxes. Stream
readers run in their own group ("stream"), so a thousand open event streams never starve the
calls inboxes make; health checks have theirs ("health").
"""

from __future__ import annotations

from actors.agent_offers import AgentOffers
from actors.agent_presence import AgentPresence
from actors.agent_stream import AgentStream


class AgentActor(AgentOffers, AgentPresence, AgentStream):
    """The deployed agent: every part of it, on one core."""
