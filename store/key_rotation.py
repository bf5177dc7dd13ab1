"""Rotating the encryption key: a new key first in the key file (or `WA_ROUTER_SECRET_KEY`), earlier
keys after it (decrypt only), then every stored secret encrypted again with the new key.

Run with every gateway stopped (`wa-router rotate-secret-key` checks the deployment lease): a gateway or
sender started with the old key alone could not read what is encrypted with the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import select

from store.crypto import SecretBox, parse_keys
from store.db import Database
from store.tables import WhatsAppAccount


def write_key_file(key_file: Path, keys: list[bytes]) -> None:
    """Replace the key file atomically with `keys`, one a line, readable by its owner only."""
    fd, temporary = tempfile.mkstemp(dir=key_file.parent, prefix=".secret-key-")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\n".join(keys) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, key_file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_new_key(key_file: Path) -> list[bytes]:
    """A new key first in `key_file`, the current ones kept after it; the file's keys now."""
    keys = [Fernet.generate_key(), *parse_keys(key_file.read_bytes())]
    write_key_file(key_file, keys)
    return keys


async def reencrypt_secrets(db: Database, box: SecretBox) -> int:
    """Encrypt every stored access token and app secret again with `box`'s first key, in one transaction;
    the number of WhatsApp accounts done."""
    async with db.session() as session:
        accounts = (await session.scalars(select(WhatsAppAccount))).all()
        for account in accounts:
            account.access_token_enc = box.rotate(account.access_token_enc)
            account.app_secret_enc = box.rotate(account.app_secret_enc)
        await session.commit()
    return len(accounts)
