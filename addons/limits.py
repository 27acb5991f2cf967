"""Where the Policy addon keeps its counters: in process, or in Redis shared by every gateway.

Both stores answer the same questions with the same rules (`scheduler.limits`, `scheduler.quota`):

    wait = await store.take_rate(key_id, limit, window_s, lease)      # 0.0: admitted; else seconds to wait
    await store.give_back_rate(key_id, lease)                           # a refused request does not count
    outcome = await store.reserve(user_id, period, cost, lease, ttl_s)  # RESERVED | REFUSED | UNKNOWN
    await store.start_ledger(user_id, period, budget, used, expires_at) # after UNKNOWN: load it, retry
    await store.settle(user_id, period, lease, actual)                  # reservation → real usage
    await store.sync_used(user_id, period, used)                        # after a switch of store: the database's
    lost = await store.renew(reservations, ttl_s)                       # the heartbeat of live requests

`lease` is the request id: one request holds at most one entry of each kind, and giving it back
twice is harmless. Everything a lease holds in Redis expires `ttl_s` after its gateway last renewed
it, so a gateway killed with requests in flight locks nobody out for longer than that.

Redis key layout (`{prefix}` is the `redis_key_prefix` option, "mindrouter" by default):

    {prefix}:rate:{key_id}                 sorted set  request id → admitted at (ms); expires after the window
    {prefix}:quota:{user_id:period}        hash        budget, used, reserved; expires a week after the period
    {prefix}:quota:{user_id:period}:leases sorted set  request id → reservation expiry (ms)
    {prefix}:quota:{user_id:period}:amounts hash       request id → tokens reserved

Each operation is one Lua script, so it is atomic however many gateways race. Scripts read the time
from Redis (`TIME`), one clock for every gateway; tests pass a virtual clock instead.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from scheduler.limits import SlidingWindow
from scheduler.quota import Ledger, next_period_start

if TYPE_CHECKING:
    import redis.asyncio as aioredis

RESERVED, REFUSED, UNKNOWN = "reserved", "refused", "unknown"

# A quota's Redis keys outlive their period by this much, so requests that straddle the turn of the
# month still find their reservation when they settle.
QUOTA_KEY_GRACE = dt.timedelta(days=7)


class ReserveOutcome(NamedTuple):
    state: str  # RESERVED | REFUSED | UNKNOWN (no ledger for this user and period yet: load it, retry)
    remaining: int = 0  # tokens left: after the reservation, or before the refused one


def quota_keys_expire_at(period: str) -> float:
    """Epoch seconds when the Redis keys of `period` ("YYYY-MM") may go."""
    start = dt.datetime.strptime(period, "%Y-%m")
    return (next_period_start(start) + QUOTA_KEY_GRACE).replace(tzinfo=dt.UTC).timestamp()


class LocalCounters:
    """Counters of this process alone: exact for one gateway, forgotten when it stops (no expiry needed)."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[int, SlidingWindow] = {}
        self.ledgers: dict[tuple[int, str], Ledger] = {}
        self.reservations: dict[str, tuple[tuple[int, str], int]] = {}  # lease → ((user, period), tokens)
        self.rate_leases: dict[str, float] = {}  # lease → when it entered its key's window

    async def take_rate(self, key_id: int, limit: int, window_s: float, lease: str) -> float:
        now = self.clock()
        wait = self.windows.setdefault(key_id, SlidingWindow()).admit(now, limit, window_s)
        if wait <= 0:
            self.rate_leases[lease] = now
        return wait

    async def give_back_rate(self, key_id: int, lease: str) -> None:
        taken_at = self.rate_leases.pop(lease, None)
        window = self.windows.get(key_id)
        if taken_at is not None and window is not None:
            window.give_back(taken_at)

    async def reserve(self, user_id: int, period: str, cost: int, lease: str, ttl_s: float) -> ReserveOutcome:
        ledger = self.ledgers.get((user_id, period))
        if ledger is None:
            return ReserveOutcome(UNKNOWN)
        if not ledger.try_reserve(cost):
            return ReserveOutcome(REFUSED, ledger.remaining)
        self.reservations[lease] = ((user_id, period), cost)
        return ReserveOutcome(RESERVED, ledger.remaining)

    async def start_ledger(self, user_id: int, period: str, budget: int, used: int, expires_at: float) -> None:
        self.ledgers.setdefault((user_id, period), Ledger(budget, used))

    async def settle(self, user_id: int, period: str, lease: str, actual: int) -> None:
        _, reserved = self.reservations.pop(lease, (None, 0))
        if ledger := self.ledgers.get((user_id, period)):
            ledger.settle(reserved, actual)

    async def sync_used(self, user_id: int, period: str, used: int) -> None:
        if ledger := self.ledgers.get((user_id, period)):
            ledger.used = max(ledger.used, used)

    async def renew(self, reservations: list[tuple[int, str, str]], ttl_s: float) -> list[str]:
        return []  # nothing here expires: the process holding it is the one counting

    async def set_budgets(self, budgets: dict[tuple[int, str], int]) -> None:
        for key, budget in budgets.items():
            if ledger := self.ledgers.get(key):
                ledger.budget = budget

    async def standings(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Ledger]:
        return {key: Ledger(ledger.budget, ledger.used, ledger.reserved)
                for key in keys if (ledger := self.ledgers.get(key))}

    def sweep(self, current_period: str, window_s: float) -> None:
        """Forget windows nobody used for a whole window, and past periods with nothing reserved."""
        now = self.clock()
        for key_id in [k for k, w in self.windows.items() if not w.times or w.times[-1] <= now - window_s]:
            del self.windows[key_id]
        for lease in [lease for lease, at in self.rate_leases.items() if at <= now - window_s]:
            del self.rate_leases[lease]
        for key in [k for k, ledger in self.ledgers.items() if k[1] != current_period and ledger.reserved == 0]:
            del self.ledgers[key]


# Every script reads the time as an argument: empty means Redis's own clock, one for all gateways.
_CLOCK_LUA = """
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: window. ARGV: now, window ms, limit, request id. → 0 admitted, else ms until one more fits.
RATE_LUA = _CLOCK_LUA + """
local now, window, limit = now_ms(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return tonumber(blocking[2]) + window - now
"""

# KEYS: a reservation lease set. ARGV: now, ttl ms, request ids.
# → those no longer there (a lease already expired stays gone: its tokens were given back).
RENEW_LUA = _CLOCK_LUA + """
local now, ttl = now_ms(ARGV[1]), tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV do
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expiry and tonumber(expiry) > now then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# Reservations whose gateway stopped renewing them give their tokens back.
_DROP_STALE_LUA = """
local function drop_stale(quota, leases, amounts, now)
  local stale = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, lease in ipairs(stale) do
    local amount = redis.call('HGET', amounts, lease)
    if amount then redis.call('HINCRBY', quota, 'reserved', -tonumber(amount)) end
    redis.call('HDEL', amounts, lease)
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
end
"""

# KEYS: quota, leases, amounts. ARGV: budget, used, expire at (epoch ms). → 1 started, 0 there already.
QUOTA_START_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'budget', ARGV[1], 'used', ARGV[2], 'reserved', 0)
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

# KEYS: quota, leases, amounts. ARGV: now, ttl ms, cost, request id.
# → {1, remaining after} reserved, {0, remaining} refused, {-1, 0} no ledger yet.
QUOTA_RESERVE_LUA = _CLOCK_LUA + _DROP_STALE_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local now, ttl, cost = now_ms(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
drop_stale(KEYS[1], KEYS[2], KEYS[3], now)
local q = redis.call('HMGET', KEYS[1], 'budget', 'used', 'reserved')
local remaining = tonumber(q[1]) - tonumber(q[2]) - tonumber(q[3])
if cost > remaining then return {0, remaining} end
redis.call('HINCRBY', KEYS[1], 'reserved', cost)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], cost)
local lifetime = redis.call('PTTL', KEYS[1])  -- the reservations go when their ledger goes
if lifetime > 0 then
  redis.call('PEXPIRE', KEYS[2], lifetime)
  redis.call('PEXPIRE', KEYS[3], lifetime)
end
return {1, remaining - cost}
"""

# KEYS: quota, leases, amounts. ARGV: request id, tokens used. A reservation that already lapsed
# gave its tokens back when it was dropped; the usage counts either way.
QUOTA_SETTLE_LUA = """
local amount = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if amount then redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(amount)) end
redis.call('HINCRBY', KEYS[1], 'used', ARGV[2])
return 1
"""

# KEYS: quota. ARGV: used as the database has it. The ledger keeps the larger count (the database lags
# by the writer's batch; Redis misses what was spent while gateways counted in process).
QUOTA_SYNC_USED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'used')) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
end
return 1
"""

# KEYS: quota. ARGV: budget. A ledger nobody started stays unstarted (it loads the budget itself).
QUOTA_SET_BUDGET_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'budget', ARGV[1])
return 1
"""

# KEYS: quota, leases, amounts. ARGV: now. → {budget, used, reserved}, stale reservations dropped; {} if none.
QUOTA_STANDING_LUA = _CLOCK_LUA + _DROP_STALE_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
drop_stale(KEYS[1], KEYS[2], KEYS[3], now_ms(ARGV[1]))
return redis.call('HMGET', KEYS[1], 'budget', 'used', 'reserved')
"""


def shared_failures() -> tuple[type[BaseException], ...]:
    """What a Redis failure looks like from redis-py: its own errors, socket errors, our deadline.

    redis-py (6 MB of a gateway's memory) is imported only by `connect`, so only by a gateway given a
    REDIS_URL; where it never was, none of its errors can have been raised, and catching a failure does
    not import it (an import would stall the event loop)."""
    redis = sys.modules.get("redis")
    return (OSError, TimeoutError) if redis is None else (redis.RedisError, OSError, TimeoutError)


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A pooled client that gives up quickly: a Redis outage must cost a request milliseconds, not minutes.

    A connection error is retried once, at once, on a new connection: after Redis restarts, each pooled
    connection to the old server fails its next command ("Connection closed by server"), which never
    reached the new one, and must not count as an outage."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30,
        max_connections=256, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


class RedisCounters:
    """Counters in Redis, shared by every gateway with the same REDIS_URL and key prefix.

    Failures (connection refused, timeouts) surface as `redis.RedisError` or `OSError`; the
    Policy addon decides what a failure means.
    """

    shared = True

    def __init__(self, client: aioredis.Redis, prefix: str, clock: Callable[[], float] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock  # None: Redis's clock
        self.rate_script = client.register_script(RATE_LUA)
        self.renew_script = client.register_script(RENEW_LUA)
        self.start_script = client.register_script(QUOTA_START_LUA)
        self.reserve_script = client.register_script(QUOTA_RESERVE_LUA)
        self.settle_script = client.register_script(QUOTA_SETTLE_LUA)
        self.budget_script = client.register_script(QUOTA_SET_BUDGET_LUA)
        self.sync_used_script = client.register_script(QUOTA_SYNC_USED_LUA)
        self.standing_script = client.register_script(QUOTA_STANDING_LUA)

    def now_arg(self) -> str:
        return "" if self.clock is None else str(round(self.clock() * 1000))

    def rate_key(self, key_id: int) -> str:
        return f"{self.prefix}:rate:{key_id}"

    def quota_keys(self, user_id: int, period: str) -> list[str]:
        quota = f"{self.prefix}:quota:{{{user_id}:{period}}}"  # one hash tag: one slot in a Redis Cluster
        return [quota, f"{quota}:leases", f"{quota}:amounts"]

    async def take_rate(self, key_id: int, limit: int, window_s: float, lease: str) -> float:
        wait_ms = await self.rate_script(
            keys=[self.rate_key(key_id)], args=[self.now_arg(), max(1, round(window_s * 1000)), limit, lease])
        return int(wait_ms) / 1000

    async def give_back_rate(self, key_id: int, lease: str) -> None:
        await self.client.zrem(self.rate_key(key_id), lease)

    async def sync_used(self, user_id: int, period: str, used: int) -> None:
        await self.sync_used_script(keys=self.quota_keys(user_id, period)[:1], args=[used])

    async def reserve(self, user_id: int, period: str, cost: int, lease: str, ttl_s: float) -> ReserveOutcome:
        state, remaining = await self.reserve_script(
            keys=self.quota_keys(user_id, period),
            args=[self.now_arg(), _ms(ttl_s), cost, lease])
        return ReserveOutcome({1: RESERVED, 0: REFUSED, -1: UNKNOWN}[int(state)], int(remaining))

    async def start_ledger(self, user_id: int, period: str, budget: int, used: int, expires_at: float) -> None:
        await self.start_script(keys=self.quota_keys(user_id, period), args=[budget, used, round(expires_at * 1000)])

    async def settle(self, user_id: int, period: str, lease: str, actual: int) -> None:
        await self.settle_script(keys=self.quota_keys(user_id, period), args=[lease, actual])

    async def renew(self, reservations: list[tuple[int, str, str]], ttl_s: float) -> list[str]:
        """Renew the reservations of this gateway's live requests in one round trip; the leases Redis no
        longer held (expired, or lost in a restart)."""
        by_key: dict[str, list[str]] = {}
        for user_id, period, lease in reservations:
            by_key.setdefault(self.quota_keys(user_id, period)[1], []).append(lease)
        if not by_key:
            return []
        now, ttl = self.now_arg(), _ms(ttl_s)
        async with self.client.pipeline(transaction=False) as pipe:
            for key, leases in by_key.items():
                await self.renew_script(keys=[key], args=[now, ttl, *leases], client=pipe)
            return [lease.decode() for lost in await pipe.execute() for lease in lost]

    async def set_budgets(self, budgets: dict[tuple[int, str], int]) -> None:
        if not budgets:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for (user_id, period), budget in budgets.items():
                await self.budget_script(keys=self.quota_keys(user_id, period)[:1], args=[budget], client=pipe)
            await pipe.execute()

    async def standings(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Ledger]:
        keys = list(keys)
        if not keys:
            return {}
        now = self.now_arg()
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, period in keys:
                await self.standing_script(keys=self.quota_keys(user_id, period), args=[now], client=pipe)
            answers = await pipe.execute()
        return {key: Ledger(*(int(value) for value in answer)) for key, answer in zip(keys, answers) if answer}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
