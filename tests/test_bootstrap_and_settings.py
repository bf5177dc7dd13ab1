"""Admin-token bootstrap, the CLI, secret encryption and settings — no server needed."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select

from config.settings import Settings
from gateway import cli
from gateway.bootstrap import ensure_admin_token, rotate_admin_token
from gateway.security import hash_token
from store.crypto import SecretBox, load_or_create_key
from store.db import Database
from store.migrate import upgrade_to_head
from store.tables import ApiToken

T = TypeVar("T")


def _with_db(url: str, action: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        db = Database(url)
        try:
            return await action(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _admin_hashes(url: str) -> list[str]:
    async def read(db: Database) -> list[str]:
        async with db.session() as session:
            return list((await session.scalars(select(ApiToken.token_hash).where(ApiToken.user_id.is_(None)))).all())

    return _with_db(url, read)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'boot.db'}"
    upgrade_to_head(url)
    return url


def test_generated_admin_token_is_shown_once_and_stored_hashed(sqlite_url: str) -> None:
    token = _with_db(sqlite_url, lambda db: ensure_admin_token(db, None))
    assert token and token.startswith("war_")
    assert _admin_hashes(sqlite_url) == [hash_token(token)]
    # A second start generates nothing and prints nothing: the token exists only as its hash.
    assert _with_db(sqlite_url, lambda db: ensure_admin_token(db, None)) is None
    assert _admin_hashes(sqlite_url) == [hash_token(token)]


def test_configured_admin_token_replaces_earlier_ones(sqlite_url: str) -> None:
    generated = _with_db(sqlite_url, lambda db: ensure_admin_token(db, None))
    assert generated is not None
    assert _with_db(sqlite_url, lambda db: ensure_admin_token(db, "configured-secret")) is None
    assert _admin_hashes(sqlite_url) == [hash_token("configured-secret")]
    assert hash_token(generated) not in _admin_hashes(sqlite_url)


def test_rotate_admin_token(sqlite_url: str) -> None:
    first = _with_db(sqlite_url, lambda db: ensure_admin_token(db, None))
    second = _with_db(sqlite_url, rotate_admin_token)
    assert second != first
    assert _admin_hashes(sqlite_url) == [hash_token(second)]


def test_cli_rotate_admin_token_prints_a_working_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("WA_ROUTER_DATABASE_URL", url)
    assert cli.main(["rotate-admin-token"]) == 0
    printed = capsys.readouterr().out.strip().split()[-1]
    assert _admin_hashes(url) == [hash_token(printed)]


def test_cli_refuses_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "No such command 'no-such-command'" in capsys.readouterr().err


def test_generated_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "secret.key"
    key = load_or_create_key(None, key_file)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert load_or_create_key(None, key_file) == key
    box = SecretBox(key)
    ciphertext = box.encrypt("EAAG-very-secret")
    assert "EAAG-very-secret" not in ciphertext
    assert box.decrypt(ciphertext) == "EAAG-very-secret"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(load_or_create_key(None, tmp_path / "other.key")).decrypt(ciphertext)


def test_settings_read_the_environment_and_pin_sqlite_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_ROUTER_DATABASE_URL", "sqlite+aiosqlite:///./data/x.db")
    monkeypatch.setenv("WA_ROUTER_PORT", "8123")
    settings = Settings()
    # Actors run in other working directories: the path must be absolute.
    assert settings.database_url == f"sqlite+aiosqlite:///{Path('data/x.db').resolve()}"
    assert settings.callback_base_url == "http://127.0.0.1:8123"
    monkeypatch.setenv("WA_ROUTER_PUBLIC_URL", "https://router.example.com/")
    assert Settings().callback_base_url == "https://router.example.com"
    monkeypatch.setenv("WA_ROUTER_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_a_short_admin_token_is_refused_at_start() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="admin_token"):
        Settings(admin_token="admin-123")
    with pytest.raises(ValidationError, match="at least 43 characters"):
        Settings(admin_token="x" * 42)
    assert Settings(admin_token="x" * 43).admin_token == "x" * 43
    assert Settings().admin_token is None  # unset: one is generated at first start
