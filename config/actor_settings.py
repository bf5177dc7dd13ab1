"""What the routing actors need of `Settings`, as a plain frozen dataclass.

An actor's constructor arguments are unpickled in the actor's own process: handing it the pydantic
`Settings` would import pydantic-settings (and `.env` parsing) into every inbox, agent and sender
process, where nothing validates anything: 1.5 MiB of unique memory per agent actor, measured (pydantic
itself is imported into every Ray worker by Ray's serialization context, ours or not). `Settings`
validates once, in the gateway; `RayDirectory` hands actors this copy of the values they read.
Nothing secret is in it: no key, no admin token (a database URL's password aside, which actors need).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ActorSettings:
    database_url: str
    ray_namespace: str
    ray_task_events: bool
    actor_call_timeout_s: float
    inbox_sync_interval_s: float
    agent_deactivate_after_s: float
    agent_connection_linger_s: float
    agent_store_actors: int
    agent_store_connections: int
    graph_base_url: str
    # A reference to the encryption key, never the key: only the sender decrypts, and resolves it itself
    # (`store.crypto.resolve_key`). Constructor arguments are pickled into Ray's actor specs.
    secret_key_file: Path
    send_rate_per_number: float
    send_pair_interval_s: float
    send_timeout_s: float
    send_retry_base_s: float
    send_retry_max_s: float
    send_max_attempts: int
    # Python's garbage collector tuned after start-up (`actors.gc_tuning`).
    gc_tuning: bool = True
    # A custom Ray resource every routing actor asks a sliver of (None: none), to keep them on the nodes
    # that advertise it, e.g. off a Kubernetes head (deploy/kubernetes/ray-cluster.yaml).
    ray_actor_resource: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> ActorSettings:
        """The values of `settings` (a `Settings`, or already an `ActorSettings`) that actors read."""
        if isinstance(settings, cls):
            return settings
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})
