"""API key authentication for the admin API, with Argon2 paid once per key every few seconds."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import Request

from store.api_keys import key_fingerprint, key_prefix, verify_key
from store.models import User, key_by_prefix, utcnow

CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class CachedVerification:
    key_id: int
    expires_at: float  # time.monotonic()


def key_from_request(request: Request) -> str | None:
    """The key of `Authorization: Bearer <key>` or `X-API-Key: <key>`; None when neither is sent."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


class KeyVerifier:
    """Maps a key to its user. Successful Argon2 checks are cached by SHA-256 of the key for a few
    seconds; the key row is still read on every call, so revoking a key or deactivating its user
    takes effect on the next request."""

    def __init__(self, cache_seconds: float = CACHE_SECONDS, clock=time.monotonic, max_entries: int = 4096):
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.max_entries = max_entries
        self._verified: dict[str, CachedVerification] = {}
        self._lock = threading.Lock()

    def user_for(self, key: str) -> User | None:
        prefix = key_prefix(key)
        row = key_by_prefix(prefix) if prefix else None
        if row is None or row.status != "active" or not row.user.active:
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        if not self._recently_verified(key, row.id):
            if not verify_key(row.key_hash, key):
                return None
            self._remember(key, row.id)
        return row.user

    def _recently_verified(self, key: str, key_id: int) -> bool:
        cached = self._verified.get(key_fingerprint(key))
        return cached is not None and cached.key_id == key_id and cached.expires_at > self.clock()

    def _remember(self, key: str, key_id: int) -> None:
        now = self.clock()
        with self._lock:
            if len(self._verified) >= self.max_entries:
                self._verified = {fp: c for fp, c in self._verified.items() if c.expires_at > now}
            self._verified[key_fingerprint(key)] = CachedVerification(key_id, now + self.cache_seconds)
