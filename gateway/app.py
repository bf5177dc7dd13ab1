"""The FastAPI application: lifespan (store, migrations, Ray, actors) and the composed routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from actors.ray_connection import connect_ray, disconnect_ray
from actors.ray_directory import RayDirectory
from actors.routing_client import RoutingClient
from config.settings import Settings, get_settings
from gateway import health, metrics
from gateway.auth_first import AuthenticateFirst
from gateway.auth_throttle import AuthThrottle
from gateway.body_guard import BodyGuard
from gateway.bootstrap import ensure_admin_token
from gateway.deployment import DeploymentConflict, DeploymentLease, cluster_identity
from gateway.errors import install_error_handlers
from gateway.group_commit import DeliveryGroupCommit
from gateway.key_handoff import KeyHandoff
from gateway.log_scrub import install_token_scrubbing
from gateway.logs import LogContext
from gateway.principal_cache import TokenCache
from gateway.principals import Principal
from gateway.routers import api_routers, api_tags, message_path_routers
from gateway.routers.webhooks import signing_secrets_loader
from gateway.runtime import Runtime
from gateway.signing_cache import SigningCache
from gateway.startup_checks import SqliteGatewayClaim, StartupRefused, check_cluster, claim_sqlite_store
from gateway.stream_watch import StreamWatch
from gateway.web import install_web
from meta.graph_client import GraphClient
from store.crypto import SecretBox, load_or_create_key
from store.db import Database, is_sqlite
from store.migrate import upgrade_to_head_async
from store.sqlite_checkpoint import WalCheckpointer
from store.sqlite_file import create_private, sqlite_file_path

log = logging.getLogger("wa_router")


def create_app(settings: Settings | None = None, on_ready: Callable[[FastAPI], None] | None = None,
               sqlite_claim: SqliteGatewayClaim | None = None) -> FastAPI:
    """The gateway. `sqlite_claim`: the SQLite store already claimed for it (by `wa-router serve`'s checks)."""
    settings = settings or get_settings()
    # Before anything logs: no token (header, subprotocol, query string) reaches a log line.
    install_token_scrubbing()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_file = sqlite_file_path(settings.database_url) if is_sqlite(settings.database_url) else None
        if database_file is not None:
            create_private(database_file)  # tokens' hashes and encrypted secrets: the owner's eyes only
        try:
            claim = sqlite_claim or claim_sqlite_store(settings.database_url)
        except StartupRefused as exc:
            log.error("%s", exc)
            raise
        try:
            async with _serving(app, claim):
                yield
        finally:
            if claim is not None:
                claim.release()

    @asynccontextmanager
    async def _serving(app: FastAPI, claim: SqliteGatewayClaim | None) -> AsyncIterator[None]:
        await upgrade_to_head_async(settings.database_url)
        db = Database(settings.database_url, pool_size=settings.store_pool_size,
                      pool_timeout_s=settings.store_pool_timeout_s, lock_wait_s=settings.store_lock_wait_s)
        graph = GraphClient(settings.graph_base_url, timeout_s=settings.graph_timeout_s)
        ray_connection = connect_ray(settings)
        lease = DeploymentLease(db, cluster_identity(settings.ray_namespace),
                                heartbeat_s=settings.deployment_heartbeat_s, lease_s=settings.deployment_lease_s)
        try:
            # Before any inbox is touched: what cannot work on this cluster, then another live deployment
            # on this store (it would fight over the inboxes).
            check_cluster(settings.database_url, settings.secret_key)
            await lease.start()
        except (StartupRefused, DeploymentConflict) as exc:
            log.error("%s", exc)
            await graph.aclose()
            await db.dispose()
            disconnect_ray(ray_connection)
            raise
        sqlite_path = sqlite_file_path(settings.database_url) if is_sqlite(settings.database_url) else None
        checkpointer = WalCheckpointer(sqlite_path, settings.sqlite_checkpoint_interval_s) if sqlite_path else None
        if checkpointer is not None:
            checkpointer.start()
        secrets = SecretBox(load_or_create_key(settings.secret_key, settings.secret_key_file))
        # Senders are told where the key is (a file), never given it.
        key_handoff = KeyHandoff(settings)
        routing = RoutingClient(RayDirectory(settings, key_file=key_handoff.key_file), db,
                                settings.inbox_sync_interval_s)
        principals: TokenCache[Principal] = TokenCache(settings.principal_cache_s)
        runtime = Runtime(settings=settings, db=db, secrets=secrets, graph=graph, routing=routing,
                          intake=DeliveryGroupCommit(db),
                          signing=SigningCache(signing_secrets_loader(db, secrets), settings.webhook_secret_cache_s),
                          principals=principals, auth_throttle=AuthThrottle(settings.auth_failures_per_minute),
                          streams=StreamWatch(db, principals, settings.ws_recheck_interval_s))
        try:
            runtime.generated_admin_token = await ensure_admin_token(db, settings.admin_token)
            app.state.runtime = runtime
            app.state.lease = lease
            gateway_metrics.start(db, settings.metrics_stats_interval_s, settings.metrics_stats_window_s)
            app.state.dashboard_url = ray_connection.dashboard_url
            await routing.start()
        except BaseException:
            key_handoff.close()  # a failed start leaves no credential file behind
            if checkpointer is not None:
                await checkpointer.stop()
            raise
        if on_ready is not None:
            on_ready(app)
        try:
            yield
        finally:
            await gateway_metrics.stop()
            await runtime.streams.stop()
            await routing.stop()
            if checkpointer is not None:
                await checkpointer.stop()
            await lease.stop()
            await graph.aclose()
            await db.dispose()
            disconnect_ray(ray_connection)
            key_handoff.close()

    app = FastAPI(
        title="wa-router",
        version="0.1.0",
        summary="Actor-model routing server for WhatsApp contact centers",
        lifespan=lifespan,
        # Served by gateway.web from local files (the defaults load from a CDN).
        docs_url=None,
        redoc_url=None,
        openapi_tags=[{"name": tag} for tag in api_tags],
    )
    install_error_handlers(app)
    gateway_metrics = metrics.GatewayMetrics()
    app.state.metrics = gateway_metrics
    app.add_middleware(LogContext)
    # A body is bounded before any route, parser or dependency sees it.
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes,
                       max_webhook_body_bytes=settings.max_webhook_body_bytes)
    # An API call with a body is authenticated before the body is read at all.
    app.add_middleware(AuthenticateFirst)
    # Outermost: every answer is counted, refusals of the middlewares above included.
    app.add_middleware(metrics.RequestMetrics, metrics=gateway_metrics)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in message_path_routers + [r for r in api_routers if r not in message_path_routers]:
        app.include_router(router)

    install_web(app)  # the web console at / and the API docs at /docs

    return app
