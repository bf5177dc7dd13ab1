"""`wa-router`: start the gateway (with a local Ray instance by default) and small admin chores."""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn
from fastapi import FastAPI

from actors.directory import connect_ray, disconnect_ray
from bench.options import add_bench_arguments
from config.settings import Settings
from gateway.app import create_app
from gateway.bootstrap import rotate_admin_token
from gateway.deployment import DeploymentConflict, check_free, cluster_identity
from gateway.logs import configure_logging
from gateway.runtime import Runtime
from gateway.startup_checks import SqliteGatewayClaim, StartupRefused, check_cluster, claim_sqlite_store
from store.crypto import SecretBox, parse_keys
from store.db import Database
from store.key_rotation import add_new_key, reencrypt_secrets
from store.migrate import upgrade_to_head


def _banner(app: FastAPI) -> None:
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    gateway_url = f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        "wa-router is up",
        f"  gateway:         {gateway_url}   (API docs: {gateway_url}/docs)",
        f"  Ray dashboard:   {app.state.dashboard_url or 'managed by the cluster you joined'}",
        f"  store:           {settings.database_url}",
        f"  Graph API:       {settings.graph_base_url}",
    ]
    if runtime.generated_admin_token:
        lines.append(f"  admin token:     {runtime.generated_admin_token}   (shown once; stored hashed)")
    elif settings.admin_token:
        lines.append("  admin token:     from WA_ROUTER_ADMIN_TOKEN")
    else:
        lines.append("  admin token:     issued at first start; `wa-router rotate-admin-token` issues a new one")
    print("\n".join(lines), flush=True)


def _store_in_use(settings: Settings, deployment: str | None) -> str | None:
    """Fail fast: a deployment (`None`: a new local cluster) may not act on a store another live one holds."""
    upgrade_to_head(settings.database_url)

    async def run() -> str | None:
        db = Database(settings.database_url, pool_size=1)
        try:
            await check_free(db, deployment, settings.deployment_lease_s)
        except DeploymentConflict as exc:
            return str(exc)
        finally:
            await db.dispose()
        return None

    return asyncio.run(run())


def _preflight(settings: Settings) -> SqliteGatewayClaim | None:
    """Every refusal before the server starts, each one line (StartupRefused): another live deployment on
    the store, another gateway on a SQLite store, and what cannot work on the joined cluster.
    A new local Ray instance is checked before it is started (it would be a new deployment)."""
    if not settings.ray_address:
        conflict = _store_in_use(settings, None)
        if conflict is not None:
            raise StartupRefused(conflict)
    claim = claim_sqlite_store(settings.database_url)
    if settings.ray_address:
        connection = connect_ray(settings)  # kept: the app's lifespan uses this connection
        try:
            check_cluster(settings.database_url, settings.secret_key)
            conflict = _store_in_use(settings, cluster_identity(settings.ray_namespace))
            if conflict is not None:
                raise StartupRefused(conflict)
        except BaseException:
            if claim is not None:
                claim.release()
            disconnect_ray(connection)
            raise
    return claim


def serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "ray_address": args.ray_address}.items()
                 if v is not None}
    settings = Settings(**overrides)
    # Text: warnings and errors as before (uvicorn keeps its own lines); JSON: everything at the chosen
    # level, uvicorn's lines included, as JSON. Secrets masked either way.
    json_logs = settings.log_format == "json"
    configure_logging(settings.log_format, args.log_level if json_logs else "warning")
    try:
        claim = _preflight(settings)
    except StartupRefused as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    app = create_app(settings, on_ready=_banner, sqlite_claim=claim)
    if json_logs:  # uvicorn's loggers then go through the root's JSON handler
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, ws="websockets-sansio",
                    log_config=None)
    else:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, ws="websockets-sansio")
    return 0


def rotate(_args: argparse.Namespace) -> int:
    settings = Settings()
    upgrade_to_head(settings.database_url)

    async def run() -> str:
        db = Database(settings.database_url)
        try:
            return await rotate_admin_token(db)
        finally:
            await db.dispose()

    print(f"new platform admin token (shown once): {asyncio.run(run())}")
    return 0


def rotate_key(_args: argparse.Namespace) -> int:
    """A new encryption key, and every stored secret encrypted with it (see `store.key_rotation`)."""
    settings = Settings()
    upgrade_to_head(settings.database_url)

    async def run() -> str:
        db = Database(settings.database_url, pool_size=1)
        try:
            # Every gateway stopped: one still running with the old key alone could not read the new secrets.
            await check_free(db, None, settings.deployment_lease_s)
            if settings.secret_key:
                keys = parse_keys(settings.secret_key.encode())
                if len(keys) < 2:
                    raise RotationRefused(
                        "WA_ROUTER_SECRET_KEY holds one key: set it to '<new key>,<current key>' (a new key: python "
                        "-c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') and run "
                        "this again; then the current key may be removed from it")
                where = "WA_ROUTER_SECRET_KEY"
            else:
                keys = add_new_key(settings.secret_key_file)
                where = str(settings.secret_key_file)
            done = await reencrypt_secrets(db, SecretBox(b",".join(keys)))
            return (f"{done} WhatsApp account(s) encrypted with the new key (first in {where}); the earlier "
                    "key(s) after it only decrypt and may be removed once no backup needs them")
        finally:
            await db.dispose()

    try:
        print(asyncio.run(run()))
    except (DeploymentConflict, RotationRefused) as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


class RotationRefused(Exception):
    pass


def bench(args: argparse.Namespace) -> int:
    from bench.run import main as run_bench  # the harness's heavier imports only when asked for

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wa-router", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="start the gateway (settings from WA_ROUTER_* variables)")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument("--ray-address", help="join this Ray cluster from a Ray node of it (`auto`, `head:6379`); "
                                                  "overrides WA_ROUTER_RAY_ADDRESS")
    serve_cmd.add_argument("--log-level", default="info")
    serve_cmd.set_defaults(handler=serve)
    rotate_cmd = commands.add_parser("rotate-admin-token", help="replace the platform admin token")
    rotate_cmd.set_defaults(handler=rotate)
    rotate_key_cmd = commands.add_parser(
        "rotate-secret-key", help="encrypt every stored secret with a new key (every gateway stopped)")
    rotate_key_cmd.set_defaults(handler=rotate_key)
    bench_cmd = commands.add_parser("bench", help="benchmark the real stack under open-loop webhook load (issue 7)")
    add_bench_arguments(bench_cmd)
    bench_cmd.set_defaults(handler=bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
