"""Bearer tokens: random, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "war_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of entropy, so a plain hash (no salt, no KDF) is enough to make
    # a leaked table useless and still allows an indexed lookup.
    return hashlib.sha256(token.encode()).hexdigest()


def new_verify_token() -> str:
    return secrets.token_urlsafe(24)
