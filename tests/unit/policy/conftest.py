"""Both counter stores behind one fixture, in virtual time; the Redis one against a real Redis server."""

from __future__ import annotations

import asyncio

import pytest

from addons.limits import LocalCounters, RedisCounters, connect
from tests.unit.policy.support import REDIS_URL, VirtualClock, delete_prefix, requires_redis, unique_prefix


@pytest.fixture
def redis_prefix():
    """A key prefix of this test's own, and every key under it deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(prefix)


@pytest.fixture(params=["local", pytest.param("redis", marks=requires_redis)])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def run_with_store(store_kind, clock, redis_prefix):
    """`run_with_store(scenario)`: runs `async scenario(store)` on a fresh store of the parametrized kind."""

    def run(scenario):
        async def main():
            if store_kind == "local":
                return await scenario(LocalCounters(clock))
            client = connect(REDIS_URL, 2.0)
            try:
                return await scenario(RedisCounters(client, redis_prefix, clock))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return run
