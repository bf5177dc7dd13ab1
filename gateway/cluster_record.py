"""The Ray cluster a running gateway uses, recorded in a small JSON file next to its data.

`wa-router actors` reads it instead of guessing an address: several Ray instances may run on one
machine (tests, benchmarks, other checkouts), and only this file says which one is the gateway's.
`wa-router serve` and `wa-router demo` write it once their gateway is up (`record_cluster`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


@dataclass(frozen=True)
class ClusterRecord:
    gateway_url: str
    ray_address: str | None
    dashboard_url: str | None
    namespace: str
    # Ray's token authentication was on for the gateway: state queries must use it too.
    token_auth: bool
    pid: int

    def gateway_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True


def token_auth_enabled() -> bool:
    """Whether this process talks to Ray with token authentication."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # an older Ray: only the environment says
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    return bool(is_token_auth_enabled())


def ray_address() -> str | None:
    """The GCS address of the Ray cluster this process is connected to."""
    import ray

    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # not connected: nothing to show
        return None


def record_cluster(app_: FastAPI) -> None:
    """Record the gateway's Ray cluster for `wa-router actors`."""
    from gateway.runtime import Runtime

    runtime: Runtime = app_.state.runtime
    settings = runtime.settings
    write_record(settings.cluster_record_file, ClusterRecord(
        gateway_url=f"http://{settings.host}:{settings.port}", ray_address=ray_address(),
        dashboard_url=app_.state.dashboard_url, namespace=settings.ray_namespace,
        token_auth=token_auth_enabled(), pid=os.getpid()))


def write_record(path: Path, record: ClusterRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)  # readers never see half a file


def read_record(path: Path) -> ClusterRecord | None:
    try:
        raw = json.loads(path.read_text())
        return ClusterRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None


def remove_record(path: Path, pid: int) -> None:
    """Remove the file if it is still this process's (a newer gateway may have replaced it)."""
    record = read_record(path)
    if record is not None and record.pid == pid:
        path.unlink(missing_ok=True)
