"""Joining the configured Ray cluster, or starting a local instance of Ray on loopback (the gateway's side).

Ray's processes inherit the environment of the process that starts them, so the gateway's own configuration
is withheld from them while they start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:  # only the gateway connects to Ray; actors' processes need no pydantic
    from config.settings import Settings

# The name its warnings had when this lived in `actors.directory`: log filters and searches keep working.
log = logging.getLogger("actors.directory")


@dataclass(frozen=True)
class RayConnection:
    dashboard_url: str | None
    # True when this process started the local instance (and so shuts it down).
    owns_instance: bool


# Ray starts its workers at niceness 15 (its `worker_niceness`), so that batch tasks yield the CPU to Ray's own
# processes and drivers. Here the workers are the routing actors, the message path itself: ranked below the
# gateway, they starve whenever it is busy (measured on 2 cores with the CPUs taken: an actor got 3 % of the
# share a process at niceness 0 got; an inbox took 16 s instead of 0.3 s to start). Every Ray instance or node
# that hosts them runs them at the gateway's niceness: `ray.init(_system_config=RAY_SYSTEM_CONFIG)` where we
# start the instance, `RAY_WORKER_NICENESS_ENV` in the environment of each `ray start` (ray_cluster.yaml, deploy/).
WORKER_NICENESS = 0
RAY_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": WORKER_NICENESS}
RAY_WORKER_NICENESS_ENV = "RAY_worker_niceness"

# The gateway's own configuration (admin token, encryption key among it) stays in the gateway: actors are
# given what they need as arguments, and nothing secret.
CONFIG_ENV_PREFIX = "WA_ROUTER_"


def warn_if_below_the_gateways_priority(actor: str) -> None:
    """Logged by a routing actor whose node runs Ray's workers at a lower priority than `WORKER_NICENESS`
    (a node started without `RAY_worker_niceness=0`): it works, but a busy machine starves it."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > WORKER_NICENESS:
        log.warning("%s runs at niceness %d, below the gateway's priority: a busy node starves it; start this "
                    "node's Ray with %s=%d", actor, niceness, RAY_WORKER_NICENESS_ENV, WORKER_NICENESS)


@contextlib.contextmanager
def withheld_environment(prefix: str) -> Iterator[None]:
    """Variables starting with `prefix` removed from this process's environment while the block runs.

    Ray's processes (GCS, raylet, and the workers the raylet starts later) inherit the environment of
    the process that starts them: started inside this block, they never see these variables.
    """
    withheld = {name: value for name, value in os.environ.items() if name.startswith(prefix)}
    for name in withheld:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(withheld)


# A local instance serves this machine alone, so each of its listening sockets is on the loopback address.
# Ray binds its components (GCS, raylet and object manager, workers' gRPC servers, dashboard agent,
# runtime-env agent, metrics endpoints) to loopback only when the node's address is a loopback one, and it
# replaces a loopback `_node_ip_address` with the machine's reachable address (so that other nodes could
# join) unless its single-machine switch is set: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads once,
# at import, into `ray_constants.ENABLE_RAY_CLUSTER`. The dashboard binds `ray_dashboard_host` (127.0.0.1).
LOOPBACK = "127.0.0.1"
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def single_machine_ray() -> Iterator[None]:
    """Ray's single-machine switch set for this process and the Ray processes started inside the block."""
    from ray._private import ray_constants

    previous_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    previous_env = os.environ.get(_SINGLE_MACHINE_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_constant
        if previous_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = previous_env


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def connect_ray(settings: Settings) -> RayConnection:
    """Join the configured cluster, or start a local instance with its dashboard."""
    if ray.is_initialized():
        return RayConnection(dashboard_url=None, owns_instance=False)
    kwargs: dict[str, Any] = {"namespace": settings.ray_namespace, "log_to_driver": True}
    if settings.ray_address:
        kwargs["address"] = settings.ray_address
    else:
        # "local" starts our own instance even if another cluster runs on this machine; on loopback only.
        kwargs.update(address="local", _node_ip_address=LOOPBACK, include_dashboard=True,
                      dashboard_host=settings.ray_dashboard_host, dashboard_port=settings.ray_dashboard_port,
                      _system_config=RAY_SYSTEM_CONFIG)
        if settings.ray_num_cpus is not None:
            kwargs["num_cpus"] = settings.ray_num_cpus
    # ray.init replaces SIGTERM/SIGINT handlers with ones that exit at once; the server's own
    # (graceful shutdown: drain requests, run the lifespan's cleanup) must stay in charge.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    local = contextlib.nullcontext() if settings.ray_address else single_machine_ray()
    with withheld_environment(CONFIG_ENV_PREFIX), local:
        context = ray.init(**kwargs)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if not settings.ray_address and not is_loopback(node := ray.util.get_node_ip_address()):
        log.warning("the local Ray instance runs on %s, not on loopback: other machines can reach it", node)
    url = str(getattr(context, "dashboard_url", "") or "")
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return RayConnection(dashboard_url=url or None, owns_instance=not settings.ray_address)


def disconnect_ray(connection: RayConnection) -> None:
    if connection.owns_instance and ray.is_initialized():
        ray.shutdown()
