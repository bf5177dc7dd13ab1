"""CPU and memory per process kind (psutil), sampled in a background thread of the orchestrator.

Kinds: the gateway process, inbox actors, agent actors, other Ray workers, Ray's own daemons
(raylet, GCS, dashboard...), the Meta simulator, the simulated agents and the load generator; on a
PostgreSQL server of this machine, its processes too (`store_server`: the backends serving the stack,
and the harness's few reads, with the server's own writers). Memory is USS (memory unique to the
process: what stopping it would free).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil

MIB = 2**20

# A root process whose whole tree is of its kind, however its processes are named.
WHOLE_TREE_KINDS = ("store_server",)


def classify(process: psutil.Process, roles: dict[int, str]) -> str:
    if process.pid in roles:
        return roles[process.pid]
    try:
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    if command.startswith("ray::InboxActor"):
        return "inbox_actor"
    if command.startswith("ray::AgentStoreActor"):
        return "agent_store_actor"
    if command.startswith("ray::AgentActor"):
        return "agent_actor"
    if command.startswith("ray::"):
        return "ray_worker_other"
    return "ray_system"


@dataclass
class Window:
    """CPU used per kind between two instants (percent of one core)."""

    started: float
    cpu_start: dict[int, float]
    kinds: dict[int, str] = field(default_factory=dict)


MEMORY_EVERY = 5


class ProcessSampler:
    def __init__(self, roles: dict[int, str], interval_s: float = 1.0) -> None:
        # roles: pid -> kind for the processes the harness started; their descendants are classified.
        self.roles = dict(roles)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._cpu: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._uss: dict[int, float] = {}
        self._processes: dict[int, psutil.Process] = {}
        self.peak_uss_by_kind: dict[str, float] = defaultdict(float)
        self.peak_uss_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def add_role(self, pid: int, kind: str) -> None:
        with self._lock:
            self.roles[pid] = kind

    def start(self) -> ProcessSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # USS reads every process's smaps (~10 ms for a Ray worker): sampled every 5th tick only, or the
        # harness itself would take a third of a core from the stack it measures with 60+ processes.
        ticks = 0
        while not self._stop.wait(self.interval_s):
            ticks += 1
            self.sample(with_memory=ticks % MEMORY_EVERY == 0)

    def _tree(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid, kind in list(self.roles.items()):
            try:
                root = self._processes.get(pid) or psutil.Process(pid)
                found[pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = self._processes.get(child.pid) or child
                    if kind in WHOLE_TREE_KINDS:
                        self._kind[child.pid] = kind
            except psutil.NoSuchProcess:
                continue
        self._processes = found
        return list(found.values())

    def sample(self, with_memory: bool = True) -> None:
        totals: dict[str, float] = defaultdict(float)
        with self._lock:
            for process in self._tree():
                try:
                    kind = self._kind.get(process.pid) or classify(process, self.roles)
                    if kind in ("ray_worker_other", "ray_system"):
                        kind = classify(process, self.roles)  # an idle worker may have become an actor
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
                    self._kind[process.pid] = kind
                    if with_memory:
                        self._uss[process.pid] = process.memory_full_info().uss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            alive = {p.pid for p in self._processes.values()}
            for pid, uss in self._uss.items():
                if pid in alive:
                    totals[self._kind[pid]] += uss
            for kind, value in totals.items():
                self.peak_uss_by_kind[kind] = max(self.peak_uss_by_kind[kind], value)
            self.peak_uss_total = max(self.peak_uss_total, sum(totals.values()))

    def reset_peaks(self) -> None:
        with self._lock:
            self.peak_uss_by_kind = defaultdict(float)
            self.peak_uss_total = 0.0

    def open_window(self) -> Window:
        self.sample(with_memory=False)
        with self._lock:
            return Window(started=time.time(), cpu_start=dict(self._cpu), kinds=dict(self._kind))

    def close_window(self, window: Window) -> dict[str, float]:
        """Percent of one core used by each kind since the window opened."""
        self.sample(with_memory=False)
        elapsed = time.time() - window.started
        used: dict[str, float] = defaultdict(float)
        with self._lock:
            for pid, cpu in self._cpu.items():
                used[self._kind.get(pid, "gone")] += cpu - window.cpu_start.get(pid, 0.0)
        return {kind: round(100 * seconds / elapsed, 1) for kind, seconds in sorted(used.items())}

    def peak_memory_mib(self) -> dict[str, float]:
        with self._lock:
            peaks = {kind: round(value / MIB, 1) for kind, value in sorted(self.peak_uss_by_kind.items())}
            peaks["total"] = round(self.peak_uss_total / MIB, 1)
        return peaks

    def pids_of(self, kind: str) -> list[int]:
        with self._lock:
            alive = {p.pid for p in self._processes.values()}
            return [pid for pid, k in self._kind.items() if k == kind and pid in alive]

    def per_process(self, kind: str) -> dict[int, tuple[float, float]]:
        """pid -> (cpu seconds so far, last USS in MiB) for the live processes of a kind."""
        with self._lock:
            alive = {p.pid for p in self._processes.values()}
            return {pid: (self._cpu.get(pid, 0.0), self._uss.get(pid, 0.0) / MIB)
                    for pid, k in self._kind.items() if k == kind and pid in alive}


def local_postgres_server(database_url: str) -> int | None:
    """The pid of the PostgreSQL server (its postmaster) `database_url` names, when it runs on this machine and
    can be seen; None otherwise."""
    if not database_url.startswith("postgresql"):
        return None
    parts = urlsplit(database_url.replace("+asyncpg", ""))
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or 5432
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] != "postgres" or (process.parent() or process).name() == "postgres":
                continue  # a backend or helper, not the postmaster
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in process.net_connections(kind="inet")):
                return process.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None
