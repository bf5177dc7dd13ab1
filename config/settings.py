"""The one `Settings` object: every knob of wa-router, read from `WA_ROUTER_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# 32 random bytes in URL-safe base64 (what `secrets.token_urlsafe(32)` returns).
MIN_ADMIN_TOKEN_CHARS = 43


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WA_ROUTER_", env_file=None, extra="ignore")

    # Store: embedded SQLite by default, PostgreSQL (asyncpg) for clusters.
    database_url: str = "sqlite+aiosqlite:///./data/wa_router.db"
    # Key for encrypting access tokens and app secrets at rest (urlsafe base64, 32 bytes).
    # When unset, a key file is generated next to the data with 0600 permissions.
    secret_key: str | None = None
    secret_key_file: Path = Path("./data/secret.key")

    # Where a running gateway records its Ray cluster (address, dashboard, namespace), so that
    # `wa-router actors` finds it even when several Ray instances run on the machine.
    cluster_record_file: Path = Path("./data/gateway.json")

    # Platform admin bearer token. When unset, one is generated at first start,
    # stored hashed and printed once.
    admin_token: str | None = None

    # Where Meta reaches us (shown as the webhook callback URL); defaults to the listen address.
    public_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Meta Graph API base URL (the simulator in tests, the demo and benchmarks).
    graph_url: str = "https://graph.facebook.com/v25.0"
    graph_timeout_s: float = Field(default=10.0, gt=0)

    # Ray: empty address starts a local instance (with dashboard); "auto" or "ray://..." joins a cluster.
    ray_address: str | None = None
    ray_namespace: str = "wa-router"
    ray_dashboard_host: str = "127.0.0.1"
    ray_dashboard_port: int = 8265
    ray_num_cpus: int | None = None
    # Ray's task events (each actor call in the dashboard's task views and `ray list tasks`) for the
    # routing actors. Off, as Ray Serve leaves them off for its actors: they cost every call CPU, and each
    # actor process keeps more memory the more calls it served (an agent actor: 5.5-7.5 MiB more after 5,000).
    # The actors themselves stay listed either way.
    ray_task_events: bool = False
    # A custom Ray resource every routing actor asks a sliver of, so Ray places them only on nodes that
    # advertise it (on Kubernetes the worker group, never the head). Empty: any alive node.
    ray_actor_resource: str | None = None

    # Routing actors: the deadline of one call between inbox and agent actors (retried after it),
    # and how often each gateway sweeps the store for every inbox's configuration version, owner and messages
    # left unattached (one read for all inboxes; `actors.inbox_sweep`).
    actor_call_timeout_s: float = Field(default=2.0, gt=0)
    inbox_sync_interval_s: float = Field(default=2.0, gt=0)
    # An agent actor (a process) that has been offline with no work, no held offer and no stream reader
    # for this long stops; the next call activates it again from the store. 0 keeps it forever.
    agent_deactivate_after_s: float = Field(default=300.0, ge=0)
    # PostgreSQL: an agent actor keeps its connections this long after its last step (a busy agent does
    # not open one per step), then gives them back; 0 opens and closes one per step.
    agent_connection_linger_s: float = Field(default=5.0, ge=0)
    # PostgreSQL: agents' steps run in this many shared store actors, each on at most this many
    # connections, so agents hold `agent_store_actors * agent_store_connections` connections however many
    # are online (`actors/agent_store_actor.py`); 0 actors: each agent connects itself (up to 2).
    agent_store_actors: int = Field(default=2, ge=0, le=64)
    agent_store_connections: int = Field(default=4, ge=1, le=100)
    # The gateway's own store connections (PostgreSQL: this many kept and as many more while steps overlap;
    # SQLite: waiting readers), and how long a request waits for a free one before it is answered 503 with
    # Retry-After (the store is busy: Meta redelivers a webhook, a client retries).
    store_pool_size: int = Field(default=10, ge=1, le=200)
    store_pool_timeout_s: float = Field(default=30.0, gt=0, le=300)
    # PostgreSQL: how long a request of the gateway waits for a lock another transaction holds (a webhook delivery
    # for the same customers as one still being stored, say) before it is answered 503 with Retry-After (Meta
    # redelivers): a writer that stalls (a gateway frozen mid-transaction, a lost connection not yet noticed) holds
    # up the requests behind it this long at most. 0: no bound.
    store_lock_wait_s: float = Field(default=5.0, ge=0, le=300)
    # The deployment lease: a gateway heartbeats it; another Ray cluster may take the store only
    # once the lease is this old.
    deployment_heartbeat_s: float = Field(default=5.0, gt=0)
    deployment_lease_s: float = Field(default=20.0, gt=0)
    # Python's garbage collector, once start-up is over, in the gateway and the routing actors: what start-up
    # loaded frozen out of its scans, and rarer young collections in the gateway and the inboxes
    # (`actors/gc_tuning.py`). Off: CPython's defaults.
    gc_tuning: bool = True
    # SQLite: how often the gateway checkpoints the WAL in its own thread, outside every writer's turn.
    sqlite_checkpoint_interval_s: float = Field(default=1.0, gt=0)
    # `wa-router serve`'s logs: plain text, or one JSON object per line (organization, inbox, transaction,
    # wamid where known) for a log pipeline. Secrets are masked in both.
    log_format: Literal["text", "json"] = "text"
    # `/metrics`: how often the per-inbox gauges are computed from the store (0: never), over what window.
    metrics_stats_interval_s: float = Field(default=15.0, ge=0)
    metrics_stats_window_s: int = Field(default=3600, ge=60, le=31 * 24 * 3600)
    # `/readyz`: the deadline of each of its checks (store, Ray, lease, an actor's ping).
    readiness_timeout_s: float = Field(default=2.0, gt=0)

    # Meta retries a webhook it did not get a 2xx for; anything larger than this is refused with 413.
    max_webhook_body_bytes: int = 1024 * 1024
    # Every other request body (the API's): larger ones get 413, before the body is read when declared.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # The gateway re-checks the callers of all its open agent event sockets (token, role, membership) this
    # often, in one read, and closes (code 1008) each whose caller may no longer watch (deleted, demoted,
    # token revoked).
    ws_recheck_interval_s: float = Field(default=2.0, gt=0)
    # Who a bearer token stands for is kept this long (0: read on every call). A gateway forgets at once
    # when users or tokens change through it; this bounds how long other gateways honour a stale one.
    principal_cache_s: float = Field(default=5.0, ge=0)
    # A client address whose presented tokens failed this many times within a minute gets 429 until the
    # oldest failure is a minute old (0: no limit). Behind a proxy, uvicorn's --forwarded-allow-ips decides
    # which address that is.
    auth_failures_per_minute: int = Field(default=30, ge=0)
    # The app secrets verifying deliveries to an organization are kept decrypted this long (0: read on
    # every delivery). A gateway drops them at once when accounts change through it; this bounds how
    # long other gateways of the cluster use a secret that changed.
    webhook_secret_cache_s: float = Field(default=5.0, ge=0)
    # After `PUT .../credentials`, the replaced app secret still verifies deliveries this long: Meta retries
    # deliveries signed before the change (for up to days).
    app_secret_grace_s: float = Field(default=86400.0, ge=0)

    # Outbound sending (one sender actor per number): Meta's default throughput per number, unless the
    # number has its own setting (up to 1,000/s); Meta's pair limit (about one message every 6 s to
    # the same customer), respected by pacing; retries with exponential back-off and jitter.
    send_rate_per_number: float = Field(default=80.0, gt=0, le=1000)
    send_pair_interval_s: float = Field(default=6.0, ge=0)
    send_timeout_s: float = Field(default=10.0, gt=0)
    send_retry_base_s: float = Field(default=0.5, gt=0)
    send_retry_max_s: float = Field(default=60.0, gt=0)
    # After this many attempts a message that keeps failing transiently fails (visible to the agent).
    send_max_attempts: int = Field(default=25, ge=1)

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite_path(cls, value: str) -> str:
        # Ray actors run in other processes with other working directories:
        # a relative SQLite path must be pinned down before it is handed to them.
        prefix = "sqlite+aiosqlite:///"
        if value.startswith(prefix) and not value.startswith(prefix + "/") and ":memory:" not in value:
            value = prefix + str(Path(value[len(prefix):]).resolve())
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: str | None) -> str | None:
        # The platform admin token opens every organization: at least what 32 random bytes make in
        # URL-safe base64 (43 characters); a guessable one is refused at start rather than used.
        if value is not None and len(value) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters (32 random bytes, e.g. "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or unset to "
                             "have one generated")
        return value

    @field_validator("secret_key_file", "cluster_record_file")
    @classmethod
    def _absolute_key_file(cls, value: Path) -> Path:
        return value.resolve()

    @property
    def callback_base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def graph_base_url(self) -> str:
        return self.graph_url.rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
