"""Encryption at rest for access tokens and app secrets (Fernet: AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


def parse_keys(key: bytes) -> list[bytes]:
    """The keys of a key setting or key file: one, or several separated by commas or new lines (the
    first encrypts, every one decrypts: how a key is rotated, see `store.key_rotation`)."""
    keys = [part for part in re.split(rb"[,\s]+", key) if part]
    if not keys:
        raise ValueError("no encryption key given")
    return keys


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in parse_keys(key)])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with the configured key") from exc

    def rotate(self, ciphertext: str) -> str:
        """`ciphertext` encrypted again with the first key (it may have been with any of them)."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with the configured key") from exc


# Where a process that did not start the gateway (a sender actor on a cluster node) may find the key
# instead of the key file: set on that node by its operator, never passed through Ray.
SECRET_KEY_ENV = "WA_ROUTER_SECRET_KEY"


def resolve_key(key_file: Path) -> bytes:
    """The key for a process given only a reference to it: its own `WA_ROUTER_SECRET_KEY`, else `key_file`.

    Never creates a key: a process holding a different key than the gateway's would store secrets no one
    else can read. A missing key is an error naming where it was looked for.
    """
    explicit = os.environ.get(SECRET_KEY_ENV)
    if explicit:
        return explicit.encode()
    try:
        return key_file.read_bytes().strip()
    except FileNotFoundError as exc:
        raise RuntimeError(f"no encryption key: {SECRET_KEY_ENV} is unset and {key_file} does not exist") from exc


def load_or_create_key(explicit_key: str | None, key_file: Path) -> bytes:
    """The configured key, else the key file, else a new key file readable only by its owner."""
    if explicit_key:
        return explicit_key.encode()
    if key_file.exists():
        return key_file.read_bytes().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key
