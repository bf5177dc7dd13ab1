"""The app secrets that can verify a webhook delivery to an organization, decrypted, kept a few seconds.

Every delivery needs them: reading and decrypting them each time costs a store read and a Fernet
decryption per linked account. This gateway drops its entries as soon as a WhatsApp account is linked,
unlinked or its credentials change (the routes call `invalidate`); the short TTL bounds how long another
gateway of the cluster keeps a secret that changed there.
"""

from __future__ import annotations

import asyncio
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
        # The load under way per organization: deliveries that find the entry expired together wait for one
        # store read instead of each making its own (a busy endpoint's every expiry otherwise read it 3-5 times).
        self._loading: dict[int, asyncio.Future[list[SigningSecret]]] = {}
        # Bumped by invalidate(): a load that started before it must not store what it read.
        self._generation = 0

    async def secrets_for(self, org_id: int) -> list[SigningSecret]:
        """Every link of the WABAs `org_id` links (its own and other organizations'); [] for none."""
        entry = self._entries.get(org_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        loading = self._loading.get(org_id)
        if loading is None:
            loading = self._loading[org_id] = asyncio.ensure_future(self._load_and_keep(org_id))
        # A caller that gives up (its request cancelled) does not cancel the others' load.
        return await asyncio.shield(loading)

    async def _load_and_keep(self, org_id: int) -> list[SigningSecret]:
        generation = self._generation
        try:
            secrets = await self._load(org_id)
        finally:
            if generation == self._generation:
                self._loading.pop(org_id, None)
        if self._ttl_s > 0 and generation == self._generation:
            if len(self._entries) >= _MAX_ENTRIES:  # unknown ids cannot grow it without bound
                self._entries.clear()
            self._entries[org_id] = (time.monotonic() + self._ttl_s, secrets)
        return secrets

    def invalidate(self) -> None:
        """Forget every entry: a link of one WABA is part of every sharing organization's entry. A load under
        way is not waited for by later callers: it may have read what the change replaced."""
        self._generation += 1
        self._entries.clear()
        self._loading.clear()


_MAX_ENTRIES = 10_000
