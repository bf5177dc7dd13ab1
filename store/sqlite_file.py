"""How every process shares the SQLite file: the pragmas of each connection, and a writer's turn (an
exclusive `flock` on `<database>.writers`, held from a transaction's first write to its commit or
rollback; why: `store.sqlite_writers`). Plain Python: agent actors, which use the file without SQLAlchemy
(`store.agent_store`), open and write it like every other process.
"""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import struct
import threading
from collections.abc import Callable
from typing import Any

# WAL lets readers run beside the writer; busy_timeout makes a writer that finds the lock taken (past
# its turn, see WriterTurn) wait for it instead of failing.
# The WAL is checkpointed by the gateway's own thread (`store.sqlite_checkpoint`), outside every writer's turn;
# a writer checkpoints itself only past a large backstop (the gateway down for long), not every 1,000 pages.
WAL_BACKSTOP_PAGES = 50_000
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000",
           "PRAGMA foreign_keys=ON", f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")

# How long a writer waits for its turn before going on under SQLite's own lock (busy_timeout).
TURN_WAIT_S = 30.0

_WRITE_ACTIONS = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})
# Threads that block in `flock` for a waiting writer, kept for the next wait: a thread started per contended turn
# cost every write that waited a thread's start and end (~5 % of an inbox actor's CPU under load). A wait given up
# keeps its thread until it gets the turn (then passes it on at once); waits beyond these queue and are given up
# in time like any other. Daemon threads: a process never waits for them to exit.
_TURN_WAITER_THREADS = 4


class _TurnWaiters:
    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads free for a job not yet reserved
        self._queued = 0  # jobs waiting for a busy thread

    def submit(self, job: Callable[[], None]) -> None:
        with self._guard:
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._serve, name="sqlite-writer-turn", daemon=True).start()
            else:
                self._queued += 1
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            with self._guard:
                if self._queued > 0:
                    self._queued -= 1  # this thread takes the oldest queued job next
                else:
                    self._idle += 1


_turn_waiter_pool = _TurnWaiters(_TURN_WAITER_THREADS)


def _turn_waiters() -> _TurnWaiters:
    return _turn_waiter_pool


def sqlite_file_path(url: str) -> str | None:
    """The file of a SQLite database URL; None for an in-memory one (no other process can share it)."""
    path = url.split("///", 1)[-1]
    return path if path and ":memory:" not in path else None


def create_private(database_path: str) -> None:
    """Create the database file readable by its owner only (0600) unless it exists.

    SQLite would create it with the umask's mode (often world-readable); its WAL and shared-memory files
    take the database file's mode, so they are private too. A new directory for it is 0700.
    """
    directory = os.path.dirname(database_path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(database_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is an empty SQLite database


def lock_path_of(database_path: str) -> str:
    """The lock file every writer of the database at `database_path` takes its turn on."""
    return database_path + ".writers"


# The lock file also counts the turns taken, across every process: a write transaction each (the webhooks'
# group commit counts one per group), read by the benchmark as the store's commits. Updated by the turn's
# holder, under the lock, just before passing it on.
_COUNTER = struct.Struct("<Q")


def _count_turn(fd: int) -> None:
    try:
        raw = os.pread(fd, _COUNTER.size, 0)
        taken = _COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else 0
        os.pwrite(fd, _COUNTER.pack(taken + 1), 0)
    except OSError:
        pass  # a count is never worth a failed write


def turns_taken(database_path: str) -> int:
    """Writers' turns taken on the database so far, by every process (0 before the first)."""
    try:
        with open(lock_path_of(database_path), "rb") as lock_file:
            raw = lock_file.read(_COUNTER.size)
    except FileNotFoundError:
        return 0
    return _COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else 0


class WriterTurn:
    """One connection's hold on the writers' lock file (held from its first write to its commit)."""

    def __init__(self, lock_path: str, wait_s: float) -> None:
        self._lock_path = lock_path
        self._wait_s = wait_s
        self._fd: int | None = None
        self._guard = threading.Lock()  # taken in the connection's thread, released from the event loop's

    @property
    def held(self) -> bool:
        return self._fd is not None

    def authorize(self, action: int, *_: Any) -> int:
        if action in _WRITE_ACTIONS and self._fd is None:
            self.take()
        return sqlite3.SQLITE_OK

    def take(self) -> None:
        """Wait for the turn (at most `wait_s`; then go on without it). Blocks the calling thread."""
        # A descriptor per turn: closing it is the release, whichever thread does it.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._wait_in_kernel(fd):
                return  # given up: SQLite's own lock and busy timeout still apply
        with self._guard:
            self._fd = fd

    def _wait_in_kernel(self, fd: int) -> bool:
        """Block in `flock` (the kernel wakes the waiter the moment the lock is free), at most `wait_s`.

        A blocked `flock` cannot be interrupted, so it runs in a helper thread: one that is given up
        on closes its descriptor as soon as it gets the lock, which passes the turn on.
        """
        granted = threading.Event()
        outcome = threading.Lock()
        abandoned = False

        def wait() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with outcome:
                if abandoned:
                    os.close(fd)
                else:
                    granted.set()

        _turn_waiters().submit(wait)
        if granted.wait(self._wait_s):
            return True
        with outcome:
            if granted.is_set():
                return True
            abandoned = True
        return False

    def release(self) -> None:
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            _count_turn(fd)
            os.close(fd)
