"""Rotating the encryption key: several keys (the first encrypts), and `wa-router rotate-secret-key`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from gateway.cli import main
from store.crypto import SecretBox, load_or_create_key, parse_keys
from store.db import Database
from store.migrate import upgrade_to_head
from store.tables import Organization, WhatsAppAccount


def test_a_secret_box_encrypts_with_the_first_key_and_decrypts_with_any() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = SecretBox(old).encrypt("s3cret")
    both = SecretBox(new + b"," + old)
    assert both.decrypt(before) == "s3cret"
    assert SecretBox(new).decrypt(both.encrypt("x")) == "x"
    assert SecretBox(new).decrypt(both.rotate(before)) == "s3cret"
    assert parse_keys(b"a\nb, c\n") == [b"a", b"b", b"c"]
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(Fernet.generate_key()).decrypt(before)


def _store_with_one_account(url: str, box: SecretBox) -> None:
    upgrade_to_head(url)

    async def run() -> None:
        db = Database(url, pool_size=1)
        try:
            async with db.session() as session:
                org = Organization(name="Org", webhook_verify_token="v")
                session.add(org)
                await session.flush()
                session.add(WhatsAppAccount(org_id=org.id, waba_id="1", access_token_enc=box.encrypt("token"),
                                            app_secret_enc=box.encrypt("secret")))
        finally:
            await db.dispose()

    asyncio.run(run())


def _stored(url: str) -> tuple[str, str]:
    async def run() -> tuple[str, str]:
        db = Database(url, pool_size=1)
        try:
            async with db.session() as session:
                row = (await session.execute(
                    select(WhatsAppAccount.access_token_enc, WhatsAppAccount.app_secret_enc))).one()
                return row[0], row[1]
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_rotate_secret_key_adds_a_key_and_reencrypts_every_secret(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    key_file = tmp_path / "secret.key"
    old = load_or_create_key(None, key_file)
    _store_with_one_account(url, SecretBox(old))
    monkeypatch.delenv("WA_ROUTER_SECRET_KEY", raising=False)
    monkeypatch.setenv("WA_ROUTER_DATABASE_URL", url)
    monkeypatch.setenv("WA_ROUTER_SECRET_KEY_FILE", str(key_file))
    assert main(["rotate-secret-key"]) == 0
    keys = parse_keys(key_file.read_bytes())
    assert len(keys) == 2 and keys[1] == old and keys[0] != old
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    token_enc, secret_enc = _stored(url)
    new_only = SecretBox(keys[0])  # readable with the new key alone: the old one may go
    assert (new_only.decrypt(token_enc), new_only.decrypt(secret_enc)) == ("token", "secret")


def test_rotate_secret_key_with_one_key_in_the_environment_is_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    old = Fernet.generate_key()
    _store_with_one_account(url, SecretBox(old))
    monkeypatch.setenv("WA_ROUTER_DATABASE_URL", url)
    monkeypatch.setenv("WA_ROUTER_SECRET_KEY", old.decode())
    assert main(["rotate-secret-key"]) == 1
    assert "<new key>,<current key>" in capsys.readouterr().err
    new = Fernet.generate_key()
    monkeypatch.setenv("WA_ROUTER_SECRET_KEY", f"{new.decode()},{old.decode()}")
    assert main(["rotate-secret-key"]) == 0
    assert SecretBox(new).decrypt(_stored(url)[1]) == "secret"
