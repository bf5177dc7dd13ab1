"""The app secrets that can verify a webhook delivery to an organization, decrypted, kept a few seconds.

Every delivery needs them: reading and decrypting them each time costs a store read and a Fernet
decryption per linked account. This gateway drops its entries as soon as a WhatsApp account is linked,
unlinked or its credentials change (the routes call `invalidate`); the short TTL bounds how long another
gateway of the cluster keeps a secret that changed there.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SigningSecret:
    """One organization's link of a WABA, with the app secret it stored (decrypted)."""

    org_id: int
    waba_id: str
    app_secret: str

    def __repr__(self) -> str:  # never the secret in a log line or a traceback
        return f"SigningSecret(org_id={self.org_id}, waba_id={self.waba_id!r})"


Loader = Callable[[int], Awaitable[list[SigningSecret]]]


class SigningCache:
    def __init__(self, load: Loader, ttl_s: float) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._entries: dict[int, tuple[float, list[SigningSecret]]] = {}
        # Bumped by invalidate(): a load that started before it must not store what it read.
        self._generation = 0

    async def secrets_for(self, org_id: int) -> list[SigningSecret]:
        """Every link of the WABAs `org_id` links (its own and other organizations'); [] for none."""
        now = time.monotonic()
        entry = self._entries.get(org_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        generation = self._generation
        secrets = await self._load(org_id)
        if self._ttl_s > 0 and generation == self._generation:
            if len(self._entries) >= _MAX_ENTRIES:  # unknown ids cannot grow it without bound
                self._entries.clear()
            self._entries[org_id] = (now + self._ttl_s, secrets)
        return secrets

    def invalidate(self) -> None:
        """Forget every entry: a link of one WABA is part of every sharing organization's entry."""
        self._generation += 1
        self._entries.clear()


_MAX_ENTRIES = 10_000
