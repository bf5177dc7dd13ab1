"""The gateway re-checks its open agent streams together: one read step per pass, whatever their number.

The end-to-end drop of a demoted or deleted watcher is in tests/test_ws_auth_and_log_scrub.py; here the pass
itself runs against a real store, so what each stream is told and what the pass costs can be seen at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.principal_cache import TokenCache
from gateway.stream_watch import StreamWatch, WatchedStream
from store.db import Database
from tests.support import Gateway, create_org


class CountingDatabase(Database):
    """The store, counting the read steps taken through it."""

    read_steps = 0

    async def read(self, step: Any) -> Any:
        self.read_steps += 1
        return await super().read(step)


def _pass(db: CountingDatabase, streams: list[tuple[str | None, int, int]]) -> tuple[list[bool], int]:
    """One pass over `streams` (token, org, watched agent): which are refused, and the read steps it took."""

    async def run() -> tuple[list[bool], int]:
        # No principal kept between passes: what the store says now is what the pass sees.
        watch = StreamWatch(db, TokenCache(0), interval_s=3600)
        watched: list[WatchedStream] = [watch.add(*stream) for stream in streams]
        before = db.read_steps
        await watch.check()
        await watch.stop()
        return [stream.refused.is_set() for stream in watched], db.read_steps - before

    return asyncio.run(run())


def test_one_pass_checks_every_open_stream_in_one_read_step(gateway: Gateway) -> None:
    org, other = create_org(gateway), create_org(gateway)
    agent_id, agent_token = org.add_user()
    supervisor_id, supervisor_token = org.add_user(role="admin")
    _, outsider_token = other.add_user(role="admin")
    db = CountingDatabase(gateway.database_url, pool_size=1)
    try:
        streams: list[tuple[str | None, int, int]] = [
            (agent_token, org.id, agent_id),  # the agent's own workspace
            (supervisor_token, org.id, agent_id),  # a supervisor watching them
            (gateway.admin_token, org.id, agent_id),  # the platform admin
            (outsider_token, org.id, agent_id),  # a supervisor of another organization
            ("not-a-token", org.id, agent_id),
            (None, org.id, agent_id),
            (agent_token, org.id, supervisor_id),  # a member watching someone else
        ]
        # Twenty more agents, each on their own workspace: the pass costs the same one read step.
        streams += [(token, org.id, user_id) for user_id, token in (org.add_user() for _ in range(20))]
        refused, steps = _pass(db, streams)
        assert refused[:7] == [False, False, False, True, True, True, True]
        assert not any(refused[7:])
        assert steps == 1

        gateway.ok("PATCH", org.path(f"/users/{supervisor_id}"), org.owner_token, json={"role": "member"})
        refused, _ = _pass(db, streams[:3])
        assert refused == [False, True, False]  # demoted: no longer watches another agent

        gateway.ok("DELETE", org.path(f"/users/{agent_id}"), org.owner_token, 204)
        refused, _ = _pass(db, streams[:3])
        assert refused == [True, True, True]  # the watched agent is gone: nobody watches them
    finally:
        asyncio.run(db.dispose())
