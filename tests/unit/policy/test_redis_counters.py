"""The Redis store against a real Redis: atomic across gateways, leases that expire, the pure rules exactly."""

from __future__ import annotations

import asyncio
import time

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.limits import RESERVED, RedisCounters, connect, quota_keys_expire_at
from scheduler.limits import SlidingWindow
from scheduler.quota import period_of
from sim.stack import Service, free_port
from store.models import utcnow
from tests.support.private_redis import start_redis
from tests.unit.policy.support import REDIS_URL, VirtualClock, delete_prefix, requires_redis, unique_prefix

pytestmark = requires_redis

PERIOD = period_of(utcnow())


def gateways(prefix: str, count: int, clock=None) -> list[RedisCounters]:
    """`count` stores with a connection pool each, as that many gateway processes would have."""
    return [RedisCounters(connect(REDIS_URL, 2.0), prefix, clock) for _ in range(count)]


async def close(stores: list[RedisCounters]) -> None:
    for store in stores:
        await store.client.aclose()


def test_concurrent_acquires_from_several_gateways_never_overshoot(redis_prefix):
    async def scenario():
        stores = gateways(redis_prefix, 4)
        try:
            rates = await asyncio.gather(*(stores[i % 4].take_rate(1, 10, 60, f"r{i}") for i in range(200)))
            await stores[0].start_ledger(1, PERIOD, 1000, 0, quota_keys_expire_at(PERIOD))
            reserved = await asyncio.gather(*(stores[i % 4].reserve(1, PERIOD, 100, f"q{i}", 30) for i in range(200)))
            return sum(wait == 0 for wait in rates), sum(o.state == RESERVED for o in reserved)
        finally:
            await close(stores)

    assert asyncio.run(scenario()) == (10, 10)


def test_renewed_reservations_outlive_their_ttl(redis_prefix):
    async def scenario():
        (store,) = gateways(redis_prefix, 1)
        try:
            await store.start_ledger(1, PERIOD, 100, 0, quota_keys_expire_at(PERIOD))
            assert (await store.reserve(1, PERIOD, 80, "held", 1.0)).state == RESERVED
            for _ in range(6):  # 1.5 s in all, renewed every 0.25 s
                await asyncio.sleep(0.25)
                assert await store.renew([(1, PERIOD, "held")], 1.0) == []
                assert (await store.reserve(1, PERIOD, 80, "other", 1.0)).state != RESERVED
            await asyncio.sleep(1.05)
            return (await store.renew([(1, PERIOD, "held")], 1.0),
                    (await store.reserve(1, PERIOD, 80, "other", 1.0)).state)
        finally:
            await store.client.aclose()

    assert asyncio.run(scenario()) == (["held"], RESERVED)


def test_a_dead_gateways_reservations_give_their_tokens_back(redis_prefix):
    async def scenario():
        dead, alive = gateways(redis_prefix, 2)
        try:
            await dead.start_ledger(1, PERIOD, 100, 0, quota_keys_expire_at(PERIOD))
            assert (await dead.reserve(1, PERIOD, 80, "a", 1.0)).state == RESERVED
            await dead.client.aclose()
            refused = await alive.reserve(1, PERIOD, 80, "b", 1.0)
            await asyncio.sleep(1.05)
            admitted = await alive.reserve(1, PERIOD, 80, "b", 30)
            await alive.settle(1, PERIOD, "b", 50)
            await alive.settle(1, PERIOD, "a", 7)  # the dead one's request settles late after all: usage counts
            standing = (await alive.standings([(1, PERIOD)]))[(1, PERIOD)]
            return refused.state, admitted.state, (standing.used, standing.reserved)
        finally:
            await alive.client.aclose()

    assert asyncio.run(scenario()) == ("refused", "reserved", (57, 0))


def test_every_key_expires(redis_prefix):
    async def scenario():
        (store,) = gateways(redis_prefix, 1)
        try:
            await store.take_rate(1, 5, 60, "a")
            await store.start_ledger(1, PERIOD, 100, 0, quota_keys_expire_at(PERIOD))
            await store.reserve(1, PERIOD, 10, "a", 30)
            await store.renew([(1, PERIOD, "a")], 30)
            keys = [key async for key in store.client.scan_iter(match=f"{redis_prefix}:*")]
            return {key.decode(): await store.client.pttl(key) for key in keys}
        finally:
            await store.client.aclose()

    lifetimes = asyncio.run(scenario())
    assert len(lifetimes) == 4
    assert all(ttl > 0 for ttl in lifetimes.values()), lifetimes
    assert lifetimes[f"{redis_prefix}:rate:1"] <= 60_000


def test_an_unreachable_redis_fails_fast():
    async def scenario():
        store = RedisCounters(connect("redis://127.0.0.1:1/0", 0.2), unique_prefix())
        started = time.monotonic()
        try:
            await store.take_rate(1, 1, 60, "a")
        except (redis.RedisError, OSError):
            return time.monotonic() - started
        finally:
            await store.client.aclose()

    assert asyncio.run(scenario()) < 1.0


STEPS_MS = st.lists(st.tuples(st.integers(0, 700), st.integers(0, 2)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS_MS, st.integers(1, 4))
def test_redis_sliding_window_is_the_pure_one_exactly(steps, limit):
    """Same arrivals (ms), same decisions and the same waits, for three keys at once."""
    window_s = 1.0
    prefix, clock = unique_prefix(), VirtualClock(start=0.0)

    async def scenario():
        (store,) = gateways(prefix, 1, clock)
        model = {key: SlidingWindow() for key in range(3)}
        try:
            for i, (advance_ms, key) in enumerate(steps):
                clock.advance(advance_ms / 1000)
                expected = model[key].admit(round(clock.now * 1000) / 1000, limit, window_s)
                assert await store.take_rate(key, limit, window_s, f"r{i}") == round(expected, 3)
        finally:
            await store.client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        delete_prefix(prefix)


def test_a_restarted_redis_costs_no_command_on_the_connections_pooled_before(tmp_path):
    """Each pooled connection to the old server fails its next command; the client retries it on a new one,
    so a Redis that restarted is not taken for an outage (the shared queue would decide alone meanwhile)."""
    port = free_port()

    async def scenario(server: Service) -> list:
        client = connect(f"redis://127.0.0.1:{port}/0", 2.0)
        try:
            await asyncio.gather(*(client.time() for _ in range(8)))  # eight connections in the pool
            server.stop()
            restarted = await asyncio.to_thread(start_redis, port, tmp_path)
            try:
                return await asyncio.gather(*(client.time() for _ in range(8)), return_exceptions=True)
            finally:
                restarted.stop()
        finally:
            await client.aclose()

    answers = asyncio.run(scenario(start_redis(port, tmp_path)))
    assert [answer for answer in answers if isinstance(answer, Exception)] == []
