"""Ray's task events for the routing actors: off by default, on with `WA_ROUTER_RAY_TASK_EVENTS`.

Ray Serve leaves them off for its actors too (`RAY_SERVE_ENABLE_TASK_EVENTS`): every call records events
that its process buffers and reports, and the GCS keeps. Off, the actors are still listed (dashboard,
`ray list actors`); their calls are not (the dashboard's task views, `ray list tasks`, `ray.timeline()`).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import ray
from ray._private.state import state as ray_state

from actors.ray_directory import RayDirectory
from config.settings import Settings
from tests.support import eventually


def _calls_recorded(actor_ids: set[str]) -> dict[str, set[str]]:
    """Per actor, the methods whose calls Ray's task events hold (what `ray list tasks` reads from the GCS)."""
    seen: dict[str, set[str]] = {actor_id: set() for actor_id in actor_ids}
    for event in ray_state._get_all_task_events():
        actor_id = event.task_info.actor_id.hex() if event.HasField("task_info") else ""
        if actor_id in seen and event.task_info.func_or_class_name:
            seen[actor_id].add(event.task_info.func_or_class_name)
    return seen


def test_routing_actors_calls_are_in_rays_task_events_only_when_turned_on(ray_instance: None,
                                                                          tmp_path: Path) -> None:
    directories = {
        task_events: RayDirectory(Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", secret_key_file=tmp_path / "secret.key",
            ray_namespace=f"wa-router-test-events-{uuid.uuid4().hex[:8]}", ray_task_events=task_events))
        for task_events in (False, True)
    }
    try:
        stores = {task_events: directory.agent_store(0) for task_events, directory in directories.items()}

        async def ping_all() -> None:
            for _ in range(3):
                await asyncio.gather(*(store.ping() for store in stores.values()))

        asyncio.run(ping_all())
        ids = {task_events: store._handle._actor_id.hex() for task_events, store in stores.items()}
        def once_the_turned_on_pings_arrived() -> dict[str, set[str]] | None:
            recorded = _calls_recorded(set(ids.values()))
            return recorded if "AgentStoreActor.ping" in recorded[ids[True]] else None

        # Workers report their events every second: wait for the turned-on actor's to arrive.
        recorded = eventually(once_the_turned_on_pings_arrived, timeout=30, interval=0.5,
                              what="the turned-on actor's calls in Ray's task events")
        assert "AgentStoreActor.ping" in recorded[ids[True]]
        assert recorded[ids[False]] == set()
        # Both actors are alive and listed either way.
        names = {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)}
        assert {store.name for store in stores.values()} <= names
    finally:
        for directory in directories.values():
            directory.kill_namespace()
