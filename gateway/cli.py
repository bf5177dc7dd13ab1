"""The wa-router command line: the gateway, the demo, the benchmark, the soak and platform chores.

Heavy modules (the gateway, Ray, the benchmark harness) are imported inside the commands that need
them, so `wa-router --version` and `wa-router --help` answer at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from gateway.cli_admin import admin_app, rotate_secret_key, rotate_token
from gateway.cli_output import CliError, err, load_settings, one_line_errors, out

if TYPE_CHECKING:
    from fastapi import FastAPI

    from config.settings import Settings
    from gateway.startup_checks import SqliteGatewayClaim

app = typer.Typer(
    name="wa-router",
    help="Actor-model routing server for WhatsApp contact centers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(admin_app, name="admin")


def _version() -> str:
    try:
        return version("wa-router")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.1.0"


def _show_version(value: bool) -> None:
    if value:
        out.print(f"wa-router {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                               help="Show the version and exit.")] = False,
) -> None:
    """Actor-model routing server for WhatsApp contact centers."""


# ---------------------------------------------------------------- serve


def banner_lines(app_: FastAPI) -> list[str]:
    """What every start prints: where things are, the Ray address, and how to get an admin token."""
    from gateway.cluster_record import ray_address
    from gateway.runtime import Runtime

    runtime: Runtime = app_.state.runtime
    settings = runtime.settings
    gateway_url = f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        "wa-router is up",
        f"  gateway:         {gateway_url}   (web console: {gateway_url}/   API docs: {gateway_url}/docs)",
        f"  Ray address:     {ray_address() or 'unknown'}   (namespace {settings.ray_namespace})",
        f"  Ray dashboard:   {app_.state.dashboard_url or 'managed by the cluster you joined'}",
        f"  store:           {settings.database_url}",
        f"  Graph API:       {settings.graph_base_url}",
    ]
    if runtime.generated_admin_token:
        lines.append(f"  admin token:     {runtime.generated_admin_token}   (shown once; stored hashed)")
    elif settings.admin_token:
        lines.append("  admin token:     the value of WA_ROUTER_ADMIN_TOKEN")
    else:
        lines.append("  admin token:     issued at first start; run 'wa-router admin rotate-token' for a new one")
    return lines


def _store_in_use(settings: Settings, deployment: str | None) -> str | None:
    """Fail fast: a deployment (`None`: a new local cluster) may not act on a store another live one holds."""
    from gateway.deployment import DeploymentConflict, check_free
    from store.db import Database
    from store.migrate import upgrade_to_head

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
    """Every refusal before the server starts, each one line: another live deployment on the store, another
    gateway on a SQLite store, and what cannot work on the joined cluster. A new local Ray instance is
    checked before it is started (it would be a new deployment)."""
    from actors.ray_connection import connect_ray, disconnect_ray
    from gateway.deployment import cluster_identity
    from gateway.startup_checks import StartupRefused, check_cluster, claim_sqlite_store

    if not settings.ray_address:
        conflict = _store_in_use(settings, None)
        if conflict is not None:
            raise CliError(conflict)
    try:
        claim = claim_sqlite_store(settings.database_url)
    except StartupRefused as exc:
        raise CliError(str(exc)) from None
    if settings.ray_address:
        connection = connect_ray(settings)  # kept: the app's lifespan uses this connection
        try:
            check_cluster(settings.database_url, settings.secret_key)
            conflict = _store_in_use(settings, cluster_identity(settings.ray_namespace))
            if conflict is not None:
                raise CliError(conflict)
        except StartupRefused as exc:
            if claim is not None:
                claim.release()
            disconnect_ray(connection)
            raise CliError(str(exc)) from None
        except BaseException:
            if claim is not None:
                claim.release()
            disconnect_ray(connection)
            raise
    return claim


@app.command()
@one_line_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default WA_ROUTER_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default WA_ROUTER_PORT or 8000).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster from a Ray node of it (auto, head:6379); overrides WA_ROUTER_RAY_ADDRESS.")]
    = None,
    log_level: Annotated[str, typer.Option(help="Uvicorn's log level.")] = "info",
) -> None:
    """Start the gateway and, unless told to join a cluster, Ray.

    Settings come from WA_ROUTER_* variables; WA_ROUTER_RAY_ADDRESS (or --ray-address) joins an existing
    Ray cluster.
    """
    import uvicorn

    from actors import gc_tuning
    from config.settings import Settings
    from gateway.app import create_app
    from gateway.cluster_record import record_cluster, remove_record
    from gateway.logs import configure_logging

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port, "ray_address": ray_address}.items()
                                 if v is not None}
    settings = Settings(**overrides)
    # Text: warnings and errors as before (uvicorn keeps its own lines); JSON: everything at the chosen
    # level, uvicorn's lines included, as JSON. Secrets masked either way.
    json_logs = settings.log_format == "json"
    configure_logging(settings.log_format, log_level if json_logs else "warning")
    claim = _preflight(settings)
    status = err.status("starting Ray and the gateway ...")
    status.start()

    def ready(app_: FastAPI) -> None:
        status.stop()
        record_cluster(app_)
        print("\n".join(banner_lines(app_)), flush=True)
        if settings.gc_tuning:
            gc_tuning.tune_after_start_up(busy=True)

    try:
        extra: dict[str, Any] = {"log_config": None} if json_logs else {}  # uvicorn then logs through JSON
        uvicorn.run(create_app(settings, on_ready=ready, sqlite_claim=claim), host=settings.host, port=settings.port,
                    log_level=log_level, ws="websockets-sansio", **extra)
    finally:
        status.stop()
        remove_record(settings.cluster_record_file, os.getpid())


# ---------------------------------------------------------------- demo


@app.command()
@one_line_errors
def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    simulator_port: Annotated[int, typer.Option(help="Meta simulator port.")] = 9000,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")]
    = None,
    customer_every: Annotated[float, typer.Option(min=0.1, help="Seconds between two customers' messages.")] = 4.0,
) -> None:
    """Run a live demo: gateway, Meta simulator, customers and agents."""
    from gateway.demo import DemoOptions, run_demo

    run_demo(DemoOptions(port=port, simulator_port=simulator_port, duration_s=duration,
                         customer_every_s=customer_every), out, err)


# ---------------------------------------------------------------- bench and soak


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
@one_line_errors
def bench(ctx: typer.Context) -> None:
    """Benchmark the real stack (see wa-router bench --help)."""
    import argparse

    # The harness and its flags only when asked for: the gateway never imports the bench package.
    from bench.options import add_bench_arguments
    from bench.run import main as run_bench

    parser = argparse.ArgumentParser(prog="wa-router bench",
                                     description="Benchmark the real stack under open-loop webhook load.")
    add_bench_arguments(parser)
    code = int(run_bench(parser.parse_args(ctx.args)) or 0)
    if code:
        raise typer.Exit(code)


@app.command()
@one_line_errors
def soak() -> None:
    """Run the long fault-injection soak, then the node-loss and two-gateway soaks (minutes)."""
    # The scenarios are the test suite's own (`tests/`), run from the checkout this command is installed from,
    # whatever the directory it is started in.
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "tests" / "fault_injection.py").is_file():
        raise CliError("the soak runs from a source checkout: tests/fault_injection.py is not beside this install")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}

    def scenario(module: str) -> int:
        return subprocess.call([sys.executable, "-m", module, "--long"], cwd=checkout, env=env)

    err.print("running the fault-injection soak (python -m tests.fault_injection --long); it takes minutes")
    code = scenario("tests.fault_injection")
    # Then a worker node of a three-node cluster on this machine lost under load (PostgreSQL).
    err.print("running the node-loss soak (python -m tests.node_loss --long)")
    node_code = scenario("tests.node_loss")
    # Then two gateways of one deployment sharing PostgreSQL, one SIGKILLed and restarted under load.
    err.print("running the two-gateway soak (python -m tests.two_gateways --long)")
    pair_code = scenario("tests.two_gateways")
    if code or node_code or pair_code:
        raise typer.Exit(code or node_code or pair_code)


# ---------------------------------------------------------------- admin aliases


@app.command("rotate-secret-key", hidden=True)
@one_line_errors
def rotate_secret_key_alias() -> None:
    """Encrypt every stored secret with a new key (same as admin rotate-secret-key)."""
    rotate_secret_key()


@app.command("rotate-admin-token", hidden=True)
@one_line_errors
def rotate_admin_token_alias() -> None:
    """Replace the platform admin token (same as admin rotate-token)."""
    rotate_token()


# ---------------------------------------------------------------- actors


@app.command()
@one_line_errors
def actors(
    record: Annotated[Path | None, typer.Option(help="The running gateway's record "
                                                     "(default WA_ROUTER_CLUSTER_RECORD_FILE).")] = None,
    address: Annotated[str | None, typer.Option(help="A Ray dashboard URL, instead of the gateway's record.")]
    = None,
    namespace: Annotated[str | None, typer.Option(help="Ray namespace (default: the gateway's).")] = None,
) -> None:
    """List the live inbox, agent and sender actors."""
    from gateway.cluster_record import read_record, token_auth_enabled
    from gateway.ray_actors import StateQueryFailed, routing_actors

    settings = load_settings()
    path = record or settings.cluster_record_file
    recorded = read_record(path)
    if address is None:
        if recorded is None:
            raise CliError(f"no running gateway recorded in {path}; start one with 'wa-router serve' "
                           "or pass --address")
        if not recorded.gateway_alive():
            raise CliError(f"the gateway recorded in {path} (pid {recorded.pid}) is not running")
        if not recorded.dashboard_url:
            raise CliError("the gateway joined a cluster without a dashboard URL; pass --address")
        address = recorded.dashboard_url
    token_auth = recorded.token_auth if recorded is not None else token_auth_enabled()
    namespace = namespace or (recorded.namespace if recorded is not None else settings.ray_namespace)
    with err.status(f"asking Ray's state API at {address} ..."):
        try:
            rows = routing_actors(address, namespace, token_auth)
        except StateQueryFailed as exc:
            raise CliError(str(exc)) from exc
    if not rows:
        out.print(f"no inbox, agent or sender actors in namespace {namespace} (they start with traffic)")
        return
    table = Table("actor", "kind", "state", "pid", "node", "restarts", title=f"Ray {address}, namespace {namespace}")
    for row in rows:
        table.add_row(row.name, row.kind, row.state, str(row.pid or "-"), row.node_id, str(row.restarts))
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    """Console script entry point; returns the exit status."""
    try:
        app(args=argv, prog_name="wa-router")  # standalone: usage errors print as click prints them
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
