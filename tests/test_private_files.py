"""Files the gateway creates (the SQLite database and its WAL, the key file) are readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path

from store.crypto import load_or_create_key
from store.sqlite_file import create_private, sqlite_file_path
from tests.support import Gateway, create_org


def _mode(path: str | Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_the_gateways_sqlite_files_are_private(gateway: Gateway) -> None:
    create_org(gateway)  # something written: the WAL exists
    path = sqlite_file_path(gateway.database_url)
    assert path is not None
    assert _mode(path) == 0o600
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            assert _mode(path + suffix) == 0o600, suffix
    assert _mode(Path(path).parent / "secret.key") == 0o600


def test_create_private_makes_new_files_and_directories_private_and_keeps_existing_ones(tmp_path: Path) -> None:
    target = tmp_path / "new" / "db.sqlite"
    create_private(str(target))
    assert _mode(target) == 0o600 and _mode(target.parent) == 0o700
    target.write_bytes(b"data")
    create_private(str(target))
    assert target.read_bytes() == b"data"
    load_or_create_key(None, tmp_path / "k.key")
    assert _mode(tmp_path / "k.key") == 0o600
