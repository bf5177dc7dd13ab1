"""InboxActor: owns one inbox's transactions — their queue, offers, timers, sticky memory and rotation.

A plain class: `actors.ray_directory.RayDirectory` deploys it as the named Ray actor `inbox:<org>:<inbox>`.
It is composed of the parts of `actors.inbox_core` (state, activation, fencing, control loop, timers),
`actors.inbox_ingest` (messages in), `actors.inbox_routing` (routing passes), `actors.inbox_answers`
(the agents' and supervisors' actions) and `actors.inbox_events` (what agents and configuration changes tell
it).
"""

from __future__ import annotations

from actors.inbox_answers import InboxAnswers
from actors.inbox_events import InboxEvents
from actors.inbox_ingest import InboxIngest
from actors.inbox_routing import InboxRouting


class InboxActor(InboxIngest, InboxRouting, InboxAnswers, InboxEvents):
    """The deployed inbox: every part of it, on one core."""
