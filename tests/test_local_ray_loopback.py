"""`wa-router serve` with its own local Ray instance listens on the loopback address only.

The real gateway is started (`python -m gateway.cli serve`, no Ray address), and every process of its tree
(the gateway, Ray's GCS, raylet, dashboard, dashboard agent, runtime-env agent and workers) is watched until
each of them listens: no listening socket may be on a non-loopback address (0.0.0.0, ::, the host's address).
Its Ray workers run at the gateway's niceness (`actors.ray_connection.WORKER_NICENESS`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from actors.ray_connection import RAY_WORKER_NICENESS_ENV, WORKER_NICENESS
from gateway.background_server import free_port

REPO = Path(__file__).resolve().parents[1]

# The components that must each be seen listening before the test may pass, by how their command line
# starts or contains (Ray names its Python processes `ray::<what>`; idle workers are `ray::IDLE`).
COMPONENTS = {
    "gateway": lambda cmd: "gateway.cli" in cmd,
    "GCS": lambda cmd: "gcs_server" in cmd.split(" ", 1)[0],
    "raylet": lambda cmd: cmd.split(" ", 1)[0].endswith("/raylet"),
    "dashboard": lambda cmd: "dashboard/dashboard.py" in cmd,
    "dashboard agent": lambda cmd: cmd.startswith("ray::DashboardAgent"),
    "runtime-env agent": lambda cmd: cmd.startswith("ray::RuntimeEnvAgent"),
    "worker": lambda cmd: cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent",
                                                                          "ray::RuntimeEnvAgent")),
}


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1: gRPC binds 127.0.0.1 on a dual-stack socket
    return ip.is_loopback


def _listening(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(address, port, command line) of every listening TCP socket of `root` and its descendants."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(proc.cmdline())
            sockets = proc.net_connections(kind="tcp")
        except psutil.Error:  # gone meanwhile (a worker started and stopped)
            continue
        found += [(s.laddr.ip, s.laddr.port, cmd) for s in sockets if s.status == psutil.CONN_LISTEN]
    return found


def _workers_niceness(root: psutil.Process) -> dict[int, tuple[str, int]]:
    """pid -> (command line, niceness) of each of `root`'s Ray workers."""
    found = {}
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            cmd = " ".join(proc.cmdline())
            if COMPONENTS["worker"](cmd):
                found[proc.pid] = (cmd[:60], proc.nice())
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The gateway stopped as an operator would (SIGTERM: it shuts its Ray instance down)."""
    tree = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in tree:  # whatever of its Ray instance outlived it (never expected): only this test's processes
        with contextlib.suppress(psutil.Error):
            child.kill()


def test_every_listening_socket_of_a_gateway_with_its_local_ray_instance_is_on_loopback(tmp_path: Path) -> None:
    port, dashboard_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("WA_ROUTER_") and name != "RAY_ADDRESS"}
    env.update({"WA_ROUTER_PORT": str(port), "WA_ROUTER_RAY_DASHBOARD_PORT": str(dashboard_port),
                "WA_ROUTER_RAY_NUM_CPUS": "1",
                "WA_ROUTER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'wa.db'}",
                "WA_ROUTER_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
                "WA_ROUTER_CLUSTER_RECORD_FILE": str(tmp_path / "gateway.json")})
    log = tmp_path / "serve.log"  # a file, not a pipe: nothing blocks the gateway (Ray's workers log through it)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=REPO,
                                   stdout=out, stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    seen: dict[str, str] = {}
    worker_niceness: dict[int, tuple[str, int]] = {}
    exposed: list[tuple[str, int, str]] = []
    ready = False
    try:
        # Generous for a loaded machine; an idle one takes 10-15 s. Every socket is checked as soon as it
        # appears, so an exposed one fails the test without waiting for the rest.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and process.poll() is None:
            sockets = _listening(root)
            exposed = [s for s in sockets if not _loopback(s[0])]
            if exposed:
                break
            for address, _, cmd in sockets:
                for component, matches in COMPONENTS.items():
                    if matches(cmd):
                        seen.setdefault(component, address)
            worker_niceness.update(_workers_niceness(root))
            if not ready:
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            if ready and len(seen) == len(COMPONENTS):
                break
            time.sleep(0.5)
        record = json.loads((tmp_path / "gateway.json").read_text()) if ready else None
    finally:
        _stop(process)
    assert not exposed, "listening beyond loopback:\n" + "\n".join(f"  {a}:{p} {c[:100]}" for a, p, c in exposed)
    missing = set(COMPONENTS) - set(seen)
    assert ready and not missing, f"ready={ready}, not seen listening: {missing}\n{log.read_text()[-3000:]}"
    # The local instance is Ray-token-authenticated (Ray's default for a new local instance) unless the
    # environment says otherwise, and its address, the one the gateway records, is a loopback one.
    assert record is not None
    # Ray's workers (the routing actors among them) run at the gateway's priority, not at Ray's default 15.
    assert worker_niceness and {n for _, n in worker_niceness.values()} == {WORKER_NICENESS}, worker_niceness
    assert _loopback(record["ray_address"].rsplit(":", 1)[0].strip("[]")), record
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
        assert record["token_auth"] is True, record


def test_ray_cluster_yaml_starts_every_node_with_token_auth_and_puts_the_token_there() -> None:
    """A cluster's Ray ports listen on the network: `ray_cluster.yaml` keeps Ray's token authentication on."""
    import yaml

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if " start " in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), starts
    # Every node runs the routing actors at the gateway's priority, not at Ray's niceness for batch workers.
    assert all(f" {RAY_WORKER_NICENESS_ENV}={WORKER_NICENESS} " in c for c in starts), starts
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]
    # The gateway run on the head (the file's opening comment) uses the token too.
    assert "RAY_AUTH_MODE=token WA_ROUTER_RAY_ADDRESS=auto" in (REPO / "ray_cluster.yaml").read_text()


def test_a_routing_actor_below_the_gateways_priority_says_how_to_raise_it() -> None:
    """A node joined without `RAY_worker_niceness=0` runs its workers at Ray's 15: each routing actor logs it."""
    probe = ("import logging, os, sys\n"
             "from actors.ray_connection import warn_if_below_the_gateways_priority\n"
             "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
             "os.nice(int(sys.argv[1]))\n"
             "warn_if_below_the_gateways_priority('InboxActor of organization 7')\n")
    said = {n: subprocess.run([sys.executable, "-c", probe, str(n)], cwd=REPO, capture_output=True, text=True,
                              timeout=60) for n in (0, 15)}
    assert said[0].returncode == 0 and said[0].stdout == "", said[0]
    assert said[15].stdout == ("WARNING InboxActor of organization 7 runs at niceness 15, below the gateway's "
                               "priority: a busy node starves it; start this node's Ray with "
                               "RAY_worker_niceness=0\n"), said[15]
