"""Helpers of the policy tests: a virtual clock and the Redis server the Redis store is tested against."""

from __future__ import annotations

import os
import secrets

import pytest
import redis

# The Redis server `make test` starts (loopback, no password); override to point elsewhere.
REDIS_URL = os.environ.get("MINDROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class VirtualClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def redis_reachable() -> bool:
    try:
        return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False


requires_redis = pytest.mark.skipif(
    not redis_reachable(), reason=f"no Redis server at {REDIS_URL} (`make services` starts one)")


def unique_prefix() -> str:
    return f"mindrouter-test-{secrets.token_hex(6)}"


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
