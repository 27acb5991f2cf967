"""The shared queue's scripts against the real Redis server: slots across gateways, order by weight, expiry."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from addons.cluster import Backend, SharedQueue, fallback_share
from tests.unit.policy.support import REDIS_URL, delete_prefix, requires_redis, unique_prefix

pytestmark = requires_redis

NODE = Backend(1, 2, frozenset({"qwen"}))


def run(scenario, b_ttl_s: float = 30) -> None:
    """Two gateways ('a', 'b') on one fresh prefix, registered by a first heartbeat (b's lives `b_ttl_s`)."""
    prefix = unique_prefix()

    async def main():
        client = aioredis.Redis.from_url(REDIS_URL)
        gateways = [SharedQueue(client, prefix, name, ttl_s=ttl) for name, ttl in (("a", 30), ("b", b_ttl_s))]
        try:
            for gateway in gateways:
                await gateway.tick([])
            await scenario(*gateways)
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        delete_prefix(prefix)


async def queue(gateway: SharedQueue, request: str, user: int, weight: float = 1, cost: float = 100,
                cap: int = 0) -> list:
    return await gateway.enqueue(gateway.entry(request, cost, weight, cap), user, "qwen", [NODE])


async def leases(gateway: SharedQueue, backend: int = 1) -> set[str]:
    """The requests holding the backend's slots (a lease is "request|gateway")."""
    members = await gateway.client.zrange(f"{gateway.prefix}:backend:{backend}:leases", 0, -1)
    return {member.decode().rsplit("|", 1)[0] for member in members}


def test_two_gateways_never_hold_more_than_max_concurrent_and_a_release_grants_the_next_of_either():
    async def scenario(a: SharedQueue, b: SharedQueue):
        granted = [g.request_id for n in range(3) for g in await queue(a, f"a{n}", user=1)]
        granted += [g.request_id for n in range(3) for g in await queue(b, f"b{n}", user=2)]
        assert granted == ["a0", "a1"] and await leases(a) == {"a0", "a1"}
        # a0 ends: the slot goes to user 2's flow (its start tag is now the smallest), waiting on gateway b
        # one slot given to another gateway, and who holds the node's slots now
        assert await a.release("a0", 1, "qwen", 0.0, NODE) == (1, [], {"a": 1, "b": 1})
        assert await leases(a) == {"a1", "b0"}
        beat = await b.tick([NODE])
        assert beat.grants == [("b0", 1)]  # b hears of it at its heartbeat, if the message was lost
        assert beat.held == {1: {"a": 1, "b": 1}}  # what each would leave to the other if Redis failed now

    run(scenario)


def test_grants_follow_the_weights_over_every_gateway():
    async def scenario(a: SharedQueue, b: SharedQueue):
        weights = {1: 3, 2: 2, 3: 1}
        for n in range(60):
            for user, weight in weights.items():
                await queue(a if user != 2 else b, f"u{user}-{n}", user, weight)
        served: Counter[int] = Counter()
        for _ in range(120):
            ending = sorted(await leases(a))[0]
            user = int(ending[1])
            served[user] += 100
            await (a if user != 2 else b).release(ending, user, "qwen", 0.0, NODE)  # by the gateway it ran on
        total = sum(served.values())
        shares = [served[user] / total for user in weights]
        assert shares == pytest.approx([3 / 6, 2 / 6, 1 / 6], abs=0.02)

    run(scenario)


def test_a_correction_charges_the_flows_next_turns():
    """User 1 announced 100 tokens and used 400: its next turn comes 300 tokens (per weight) later."""
    async def scenario(a: SharedQueue, b: SharedQueue):
        for n in range(4):
            await queue(a, f"u1-{n}", 1)
            await queue(a, f"u2-{n}", 2)
        assert await leases(a) == {"u1-0", "u2-0"}
        await a.release("u1-0", 1, "qwen", 300.0, NODE)  # equal start tags: user 1 first, by its id
        await a.release("u2-0", 2, "qwen", 0.0, NODE)
        await a.release("u2-1", 2, "qwen", 0.0, NODE)
        # Without the correction user 1 (tag 200, as user 2) would have had this slot; with it, its tag is 500.
        assert await leases(a) == {"u1-1", "u2-2"}

    run(scenario)


def test_a_dead_gateways_slots_and_waiting_requests_go_within_its_lease_ttl():
    async def scenario(a: SharedQueue, b: SharedQueue):
        assert [g.request_id for g in await queue(b, "b0", 2)] == ["b0"]
        assert [g.request_id for g in await queue(b, "b1", 2)] == ["b1"]
        await queue(b, "b2", 2)  # waits on b, which now dies (ttl 0.3 s, no more heartbeats)
        await queue(a, "a0", 1)
        assert await leases(a) == {"b0", "b1"}
        began = time.monotonic()
        while await leases(a) != {"a0"}:
            await a.tick([NODE])
            assert time.monotonic() - began < 1.0, "the dead gateway's slots did not come back"
            await asyncio.sleep(0.05)
        assert await a.client.llen(f"{a.prefix}:flow:qwen:2") == 0  # its waiting request was dropped, not granted

    run(scenario, b_ttl_s=0.3)


def test_cancel_takes_a_waiting_request_out_and_says_whether_it_was_there():
    async def scenario(a: SharedQueue, b: SharedQueue):
        for n in range(3):
            await queue(a, f"a{n}", 1)
        assert await a.cancel(a.entry("a2", 100, 1, 0), 1, "qwen") is True
        assert await a.cancel(a.entry("a0", 100, 1, 0), 1, "qwen") is False  # granted already
        await a.release("a0", 1, "qwen", 0.0, NODE)
        assert await leases(a) == {"a1"}

    run(scenario)


def test_the_running_cap_holds_over_every_gateway():
    async def scenario(a: SharedQueue, b: SharedQueue):
        wide = Backend(1, 4, frozenset({"qwen"}))
        for n in range(2):
            await a.enqueue(a.entry(f"a{n}", 100, 1, 2), 1, "qwen", [wide])
            await b.enqueue(b.entry(f"b{n}", 100, 1, 2), 1, "qwen", [wide])
        await b.enqueue(b.entry("other", 100, 1, 0), 2, "qwen", [wide])
        assert await leases(a) == {"a0", "b0", "other"}  # user 1 at its cap of 2; a slot stays free for others
        await a.release("a0", 1, "qwen", 0.0, wide)
        assert await leases(a) == {"a1", "b0", "other"}

    run(scenario)


def test_renew_reasserts_leases_redis_lost():
    async def scenario(a: SharedQueue, b: SharedQueue):
        await queue(a, "a0", 1)
        await a.client.delete(f"{a.prefix}:backend:1:leases")
        assert (await a.renew([("a0", 1, 1)]))[0] == 1
        assert await leases(a) == {"a0"}
        assert (await a.renew([("a0", 1, 1)]))[0] == 0

    run(scenario)


@pytest.mark.parametrize("free", [True, False])
def test_a_failed_over_request_moves_ahead_of_the_queue_only_to_a_free_slot(free):
    async def scenario(a: SharedQueue, b: SharedQueue):
        one, other = Backend(1, 1, frozenset({"qwen"})), Backend(2, 1 if free else 0, frozenset({"qwen"}))
        await a.enqueue(a.entry("a0", 100, 1, 0), 1, "qwen", [one])
        await a.enqueue(a.entry("a1", 100, 1, 0), 1, "qwen", [one])  # waiting in the queue: it stays there
        assert await a.move("a0", 1, [other]) == (2 if free else None)
        assert await leases(a, 2) == ({"a0"} if free else set())

    run(scenario)


@pytest.mark.parametrize(("held", "running", "given_unseen", "shares"), [
    ({}, {}, 0, {"a": 1, "b": 1}),  # nothing ran: max_concurrent split evenly
    ({"a": 1, "b": 1}, {"a": 1, "b": 1}, 0, {"a": 1, "b": 1}),
    ({"a": 2}, {"a": 2}, 0, {"a": 1, "b": 0}),  # a's second request runs on: b leaves its slot free
    ({"a": 1, "b": 1}, {"a": 0, "b": 2}, 0, {"a": 0, "b": 1}),  # a's slot went to b since: a waits for b's to end
    ({"a": 1, "b": 1}, {"a": 1, "b": 1}, 1, {"a": 1, "b": 1}),  # each gave its slot to the other: nothing changed
    ({"a": 1, "gone": 1}, {"a": 1}, 0, {"a": 0, "b": 0}),  # a dead gateway's request holds its slot until its lease expires
])
def test_a_gateway_deciding_alone_leaves_free_what_the_others_ran_beyond_their_share(held, running, given_unseen,
                                                                                      shares):
    given = {me: given_unseen or max(0, held.get(me, 0) - running.get(me, 0)) for me in ("a", "b")}
    assert {me: fallback_share(2, 1, me, ["a", "b"], held, running.get(me, 0), given[me])
            for me in ("a", "b")} == shares


def test_gateways_told_of_each_other_at_different_moments_do_not_both_wait():
    """a's last word from Redis said b held both slots, b's (a moment later) that a held both; when Redis
    failed a ran both. Each leaving the other's supposed excess free would leave the node idle for the whole
    outage; b cannot have run more than a left it, so a keeps its split and b waits for a's to end."""
    a = fallback_share(2, 2, "a", ["a", "b"], {"b": 2}, mine=2, given_unseen=0)
    b = fallback_share(2, 2, "b", ["a", "b"], {"a": 2}, mine=0, given_unseen=0)
    assert (a, b) == (1, 0)
    assert max(2, a) + max(0, b) <= 2


def test_gateways_deciding_alone_never_run_more_than_max_concurrent_together():
    """Every way 5 gateways could hold up to 7 slots when Redis fails, and every slot one of them then gave
    to another before the failure: each runs its requests on and grants up to its fallback share; together
    at most 7, and when nobody was over its share and nothing moved, all 7 are used."""
    gateways = [f"g{n}" for n in range(5)]
    for counts in itertools.product(range(4), repeat=5):
        if sum(counts) > 7:
            continue
        held = {gateway: count for gateway, count in zip(gateways, counts) if count}
        caps = {me: fallback_share(7, 3, me, gateways, held, held.get(me, 0), 0) for me in gateways}
        assert sum(max(held.get(me, 0), caps[me]) for me in gateways) <= 7, held
        if all(count <= fallback_share(7, 3, gateway, gateways, {}, 0, 0) for gateway, count in zip(gateways, counts)):
            assert sum(caps.values()) == 7
        for giver, taker in itertools.permutations(gateways, 2):
            if held.get(giver):
                now = {**held, giver: held[giver] - 1, taker: held.get(taker, 0) + 1}
                shares = {me: fallback_share(7, 3, me, gateways, held, now.get(me, 0), int(me == giver))
                          for me in gateways}
                assert sum(max(now.get(g, 0), shares[g]) for g in gateways) <= 7, (held, giver, taker)
