"""Time of one cluster-wide grant through Redis on loopback (DESIGN section 8: measured and reported).

One grant decision with several gateways is one Lua script in Redis (`addons/cluster.py`), timed here
as a gateway sees it: the round trip of the script through redis-py's asyncio client, the Redis
server's own work included. Two phases, each with `--queued` requests waiting in `--users` flows of
weights 3/2/1 spread over three gateways, on one backend of `--slots` slots, all kept full:

- release+grant: a request ends (its correction charged) and the freed slot goes to the flow due next;
- enqueue: a request joins its flow and finds every slot taken (what most arrivals do on a busy cluster).

Each phase runs `--decisions` times, and a PING beside each: what the client and the socket cost
alone, so the difference is the script's own. p50 and p99 in microseconds.

    python bench/cluster_grant.py [--queued 10000] [--users 300] [--decisions 5000] [--slots 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time

import redis.asyncio as aioredis
from harness import percentile

from addons.cluster import Backend, SharedQueue

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "llama3.2"
WEIGHTS = (3.0, 2.0, 1.0)


async def main(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"mindrouter-bench-{secrets.token_hex(4)}"
    gateways = [SharedQueue(client, prefix, f"gw{n}", ttl_s=300) for n in range(3)]
    node = Backend(1, args.slots, frozenset({MODEL, f"{MODEL}:latest"}))
    rng = random.Random(13)
    for gateway in gateways:
        await gateway.tick([])
    users: dict[str, int] = {}  # request id → its user, for the release
    serial = 0

    async def enqueue() -> list:
        nonlocal serial
        serial += 1
        user = rng.randrange(args.users)
        gateway = gateways[user % 3]
        users[f"r{serial}"] = user
        entry = gateway.entry(f"r{serial}", rng.randint(100, 1500), WEIGHTS[user % 3], 0)
        return await gateway.enqueue(entry, user, MODEL, [node])

    try:
        running = {grant.request_id for _ in range(args.queued + args.slots) for grant in await enqueue()}
        timings: dict[str, list[float]] = {"release+grant": [], "enqueue (all slots taken)": [],
                                           "PING (the round trip alone)": []}
        for _ in range(args.decisions):
            ending = rng.choice(sorted(running))
            running.discard(ending)
            began = time.perf_counter()
            await gateways[0].release(ending, users.pop(ending), MODEL, rng.uniform(-200, 200), node)
            timings["release+grant"].append((time.perf_counter() - began) * 1e6)
            began = time.perf_counter()
            await enqueue()
            timings["enqueue (all slots taken)"].append((time.perf_counter() - began) * 1e6)
            began = time.perf_counter()
            await client.ping()
            timings["PING (the round trip alone)"].append((time.perf_counter() - began) * 1e6)
            # the grant may have gone to another gateway's request: the slot table says who runs now
            running = {member.decode() for member in await client.zrange(f"{prefix}:backend:1:leases", 0, -1)}
        print(f"{args.queued} waiting in {args.users} flows over 3 gateways, {args.slots} slots, Redis on loopback")
        for phase, values in timings.items():
            print(f"  {phase:28s} p50 {percentile(values, 0.5):7.1f} µs   p99 {percentile(values, 0.99):7.1f} µs")
    finally:
        keys = [key async for key in client.scan_iter(f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start:start + 500])
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--decisions", type=int, default=5_000)
    parser.add_argument("--slots", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
