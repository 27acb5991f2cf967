"""The cluster's queue and slot table in Redis: every gateway sharing a REDIS_URL grants from one.

Backend slots are leases (a sorted set per backend, request id → expiry), so no backend ever has
more than `max_concurrent` requests from all gateways together, and a killed gateway's slots come
back once their leases expire. Waiting requests are registered there too, one list per (user,
model) flow, and the flows of a model are ordered by **start-time fair queueing** over a shared
ledger of served tokens per unit of weight (docs/scheduler.md, "Several gateways"): whichever
gateway's script finds a free slot grants it to the flow with the smallest start tag, whatever
gateway that flow's request waits on, and tells that gateway over pub/sub.

Each operation is one Lua script (atomic however many gateways race):

    enqueue   register a waiting request, then fill the free slots of the backends that serve it
    cancel    take a waiting request out (its client left, it waited too long, the gateway stops)
    release   free a slot, charge the request's real usage to its flow, refill that backend
    tick      heartbeat of this gateway, drop dead gateways, refill every backend (expired leases)
    renew     re-assert the leases of this gateway's running requests (after Redis lost them, too)
    move      a failed-over request takes a free slot on another backend, ahead of the queue

Key layout (`{prefix}` is `redis_key_prefix`), none expiring on its own except through the scores:

    {prefix}:gateways               sorted set  gateway id → heartbeat expiry (ms)
    {prefix}:epochs                 hash        gateway id → its current epoch (stale entries carry another)
    {prefix}:backend:{id}:leases    sorted set  "request|gateway" → lease expiry (ms): the slots in use
    {prefix}:running:{user}         sorted set  request id → lease expiry (ms): the user's running requests
    {prefix}:waiting:{model}        sorted set  user id → start tag of the flow's head
    {prefix}:flow:{model}:{user}    list        entries "request|gateway|epoch|cost|weight|cap", oldest first
    {prefix}:ledger:{model}         hash        V (virtual time), f:{user} finish tag, d:{user} pending correction
    {prefix}:granted:{gateway}      hash        request id → backend: grants another gateway's script made
    {prefix}:grants:{gateway}       channel     "request backend", the same grants at once

Keys are built inside the scripts, so this needs one Redis server (or a primary), not Redis Cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# Flows looked at per model and grant, best first, to find one whose user is below its running cap.
SCAN_FLOWS = 32

_COMMON_LUA = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lease(request, gateway) return request .. '|' .. gateway end

local function split(text, sep)
  local parts = {}
  for part in string.gmatch(text, '([^' .. sep .. ']+)') do parts[#parts + 1] = part end
  return parts
end

local function alive(gateway, epoch, now)
  local expiry = redis.call('ZSCORE', P .. ':gateways', gateway)
  return expiry and tonumber(expiry) > now and redis.call('HGET', P .. ':epochs', gateway) == epoch
end

local function running(user, now)
  local key = P .. ':running:' .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

-- The head entry of a flow whose gateway still runs it, dropping those of dead or rebuilt gateways.
local function live_head(flow, now)
  while true do
    local entry = redis.call('LINDEX', flow, 0)
    if not entry then return nil end
    local e = split(entry, '|')
    if alive(e[2], e[3], now) then return e end
    redis.call('LPOP', flow)
  end
end

-- The flow to serve next on a backend serving `models`: the smallest start tag, measured from each
-- model's own virtual time, among flows whose user is below its running cap.
local function best(models, now)
  local pick, pick_lag
  for _, model in ipairs(models) do
    local waiting = P .. ':waiting:' .. model
    local flows = redis.call('ZRANGE', waiting, 0, SCAN - 1, 'WITHSCORES')
    if #flows > 0 then
      local v = tonumber(redis.call('HGET', P .. ':ledger:' .. model, 'V') or '0')
      for i = 1, #flows, 2 do
        local user, start = flows[i], tonumber(flows[i + 1])
        if pick_lag and start - v >= pick_lag then break end
        local flow = P .. ':flow:' .. model .. ':' .. user
        local head = live_head(flow, now)
        if not head then
          redis.call('ZREM', waiting, user)
        elseif tonumber(head[6]) == 0 or running(user, now) < tonumber(head[6]) then
          pick, pick_lag = {model = model, user = user, start = start, flow = flow, head = head}, start - v
          break
        end
      end
    end
  end
  return pick
end

-- Fill the free slots of one backend; grants of this gateway are returned, others' published and counted
-- in grants.given.
local function fill(backend, max, models, now, ttl, me, grants)
  local leases = P .. ':backend:' .. backend .. ':leases'
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  while redis.call('ZCARD', leases) < max do
    local pick = best(models, now)
    if not pick then return end
    local request, gateway = pick.head[1], pick.head[2]
    local cost, weight = tonumber(pick.head[4]), tonumber(pick.head[5])
    redis.call('LPOP', pick.flow)
    redis.call('ZADD', leases, now + ttl, lease(request, gateway))
    redis.call('ZADD', P .. ':running:' .. pick.user, now + ttl, request)
    local ledger = P .. ':ledger:' .. pick.model
    local pending = tonumber(redis.call('HGET', ledger, 'd:' .. pick.user) or '0')
    local finish = pick.start + cost / weight + pending
    redis.call('HSET', ledger, 'V', pick.start, 'f:' .. pick.user, finish, 'd:' .. pick.user, 0)
    if redis.call('LLEN', pick.flow) > 0 then
      redis.call('ZADD', P .. ':waiting:' .. pick.model, math.max(pick.start, finish), pick.user)
    else
      redis.call('ZREM', P .. ':waiting:' .. pick.model, pick.user)
    end
    if gateway == me then
      grants[#grants + 1] = request
      grants[#grants + 1] = backend
    else  -- published for speed, kept until that gateway's next heartbeat in case the message is lost
      redis.call('HSET', P .. ':granted:' .. gateway, request, backend)
      redis.call('PUBLISH', P .. ':grants:' .. gateway, request .. ' ' .. backend)
      grants.given = (grants.given or 0) + 1
    end
  end
end

-- The slots held on one backend, as {gateway, count, ...}: what a gateway that must decide alone later
-- leaves to the others.
local function held_on(backend)
  local by_gateway, flat = {}, {}
  for _, member in ipairs(redis.call('ZRANGE', P .. ':backend:' .. backend .. ':leases', 0, -1)) do
    local gateway = string.match(member, '|(.*)$')
    by_gateway[gateway] = (by_gateway[gateway] or 0) + 1
  end
  for gateway, count in pairs(by_gateway) do
    flat[#flat + 1] = gateway
    flat[#flat + 1] = count
  end
  return flat
end

-- Backends given as ARGV triples from `first`: id, max_concurrent, models joined by newlines.
local function fill_all(first, now, ttl, me, grants)
  for i = first, #ARGV, 3 do
    fill(ARGV[i], tonumber(ARGV[i + 1]), split(ARGV[i + 2], '\\n'), now, ttl, me, grants)
  end
end
""".replace("SCAN", str(SCAN_FLOWS))

# ARGV: prefix, me, ttl ms, entry, user, model, then backends. → own grants {request, backend, ...}
ENQUEUE_LUA = _COMMON_LUA + """
local now, me, ttl, entry, user, model = now_ms(), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local flow = P .. ':flow:' .. model .. ':' .. user
if redis.call('RPUSH', flow, entry) == 1 then
  local ledger = P .. ':ledger:' .. model
  local v = tonumber(redis.call('HGET', ledger, 'V') or '0')
  local f = tonumber(redis.call('HGET', ledger, 'f:' .. user) or '0')
  redis.call('ZADD', P .. ':waiting:' .. model, math.max(v, f), user)
end
local grants = {}
fill_all(7, now, ttl, me, grants)
return grants
"""

# ARGV: prefix, entry, user, model. → 1 taken out, 0 not waiting (granted already, or never queued).
CANCEL_LUA = _COMMON_LUA + """
local entry, user, model = ARGV[2], ARGV[3], ARGV[4]
local flow = P .. ':flow:' .. model .. ':' .. user
local removed = redis.call('LREM', flow, 1, entry)
if removed > 0 and redis.call('LLEN', flow) == 0 then redis.call('ZREM', P .. ':waiting:' .. model, user) end
return removed
"""

# ARGV: prefix, me, ttl ms, request, user, model, correction (tokens per unit of weight), then the
# released backend (one triple). → {slots given to other gateways' requests, own grants, the slots held on
# that backend now (as `held_on`)}.
RELEASE_LUA = _COMMON_LUA + """
local now, me, ttl, request, user, model = now_ms(), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
redis.call('ZREM', P .. ':backend:' .. ARGV[8] .. ':leases', lease(request, me))
redis.call('ZREM', P .. ':running:' .. user, request)
if tonumber(ARGV[7]) ~= 0 then redis.call('HINCRBYFLOAT', P .. ':ledger:' .. model, 'd:' .. user, ARGV[7]) end
local grants = {}
fill_all(8, now, ttl, me, grants)
return {grants.given or 0, grants, held_on(ARGV[8])}
"""

# ARGV: prefix, me, epoch, ttl ms, then every backend this gateway sees accepting work.
# → {1 if Redis knew this gateway's epoch already, live gateways with their heartbeat expiry (ms), own
# grants (other gateways' since the last heartbeat too: a grant whose message was lost is found here;
# taking one twice is harmless), the slots held on each of those backends as {backend, {gateway, count,
# ...}, ...}, Redis's clock (ms)}
TICK_LUA = _COMMON_LUA + """
local now, me, epoch, ttl = now_ms(), ARGV[2], ARGV[3], tonumber(ARGV[4])
local gateways = P .. ':gateways'
local known = redis.call('HGET', P .. ':epochs', me) == epoch and 1 or 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', gateways, '-inf', now)) do
  redis.call('HDEL', P .. ':epochs', dead)
end
redis.call('ZREMRANGEBYSCORE', gateways, '-inf', now)
redis.call('ZADD', gateways, now + ttl, me)
redis.call('HSET', P .. ':epochs', me, epoch)
local granted = P .. ':granted:' .. me
local grants = redis.call('HGETALL', granted)
redis.call('DEL', granted)
fill_all(5, now, ttl, me, grants)
local held = {}
for i = 5, #ARGV, 3 do
  held[#held + 1] = ARGV[i]
  held[#held + 1] = held_on(ARGV[i])
end
return {known, redis.call('ZRANGE', gateways, 0, -1, 'WITHSCORES'), grants, held, now}
"""

# ARGV: prefix, me, ttl ms, then (request, backend, user) triples. → {how many leases were missing, Redis's
# clock (ms)}.
RENEW_LUA = _COMMON_LUA + """
local now, me, ttl, missing = now_ms(), ARGV[2], tonumber(ARGV[3]), 0
for i = 4, #ARGV, 3 do
  missing = missing + redis.call('ZADD', P .. ':backend:' .. ARGV[i + 1] .. ':leases', now + ttl, lease(ARGV[i], me))
  redis.call('ZADD', P .. ':running:' .. ARGV[i + 2], now + ttl, ARGV[i])
end
return {missing, now}
"""

# ARGV: prefix, me, ttl ms, request, from backend, then (backend, max_concurrent) pairs in preference
# order. → the backend it moved to, or -1.
MOVE_LUA = _COMMON_LUA + """
local now, ttl, request = now_ms(), tonumber(ARGV[3]), lease(ARGV[4], ARGV[2])
for i = 6, #ARGV, 2 do
  local leases = P .. ':backend:' .. ARGV[i] .. ':leases'
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if redis.call('ZCARD', leases) < tonumber(ARGV[i + 1]) then
    redis.call('ZREM', P .. ':backend:' .. ARGV[5] .. ':leases', request)
    redis.call('ZADD', leases, now + ttl, request)
    return tonumber(ARGV[i])
  end
end
return -1
"""

# ARGV: prefix, me. The gateway stops: its waiting entries are dropped as they come up.
LEAVE_LUA = _COMMON_LUA + """
redis.call('ZREM', P .. ':gateways', ARGV[2])
redis.call('HDEL', P .. ':epochs', ARGV[2])
redis.call('DEL', P .. ':granted:' .. ARGV[2])
return 1
"""


class Backend(NamedTuple):
    """A backend as the shared scripts need it: where slots are, how many, and which models share them."""

    backend_id: int
    max_concurrent: int
    models: frozenset[str]

    def args(self) -> list:
        return [self.backend_id, self.max_concurrent, "\n".join(sorted(self.models))]


class Grant(NamedTuple):
    request_id: str
    backend_id: int


class Heartbeat(NamedTuple):
    known: bool  # False: Redis had forgotten this gateway (restarted, or it came back): rebuild
    gateways: dict[str, int]  # live gateways, this one included → when each last beat (ms, Redis's clock)
    grants: list[Grant]
    held: dict[int, dict[str, int]]  # backend → gateway → slots it holds there
    now_ms: int  # Redis's clock


class Release(NamedTuple):
    given: int  # the freed slot went to another gateway's request (0 or 1)
    grants: list[Grant]
    held: dict[str, int]  # gateway → slots it holds on the released backend, after this release


def _grants(flat: Sequence) -> list[Grant]:
    return [Grant(_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def _held(flat: Sequence) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _backend_args(backends: Iterable[Backend]) -> list:
    return [arg for backend in backends for arg in backend.args()]


class SharedQueue:
    """One gateway's handle on the shared queue; failures surface as redis errors or OSError."""

    def __init__(self, client: aioredis.Redis, prefix: str, gateway_id: str, ttl_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.gateway_id = gateway_id
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.epoch = 0
        self.enqueue_script = client.register_script(ENQUEUE_LUA)
        self.cancel_script = client.register_script(CANCEL_LUA)
        self.release_script = client.register_script(RELEASE_LUA)
        self.tick_script = client.register_script(TICK_LUA)
        self.renew_script = client.register_script(RENEW_LUA)
        self.move_script = client.register_script(MOVE_LUA)
        self.leave_script = client.register_script(LEAVE_LUA)

    @property
    def grants_channel(self) -> str:
        return f"{self.prefix}:grants:{self.gateway_id}"

    def entry(self, request_id: str, cost: float, weight: float, cap: int) -> str:
        """What the flow's list holds for one waiting request; `cancel` needs the same string."""
        return f"{request_id}|{self.gateway_id}|{self.epoch}|{cost:g}|{weight:g}|{cap}"

    async def enqueue(self, entry: str, user_id: int, model: str, backends: Iterable[Backend]) -> list[Grant]:
        return _grants(await self.enqueue_script(args=[
            self.prefix, self.gateway_id, self.ttl_ms, entry, user_id, model, *_backend_args(backends)]))

    async def cancel(self, entry: str, user_id: int, model: str) -> bool:
        return await self.cancel_script(args=[self.prefix, entry, user_id, model]) == 1

    async def release(self, request_id: str, user_id: int, model: str, correction: float,
                      backend: Backend) -> Release:
        """Free the slot; `correction` is (real - expected tokens) / weight, charged to the flow's next turn."""
        given, grants, held = await self.release_script(args=[
            self.prefix, self.gateway_id, self.ttl_ms, request_id, user_id, model, f"{correction:.6g}",
            *backend.args()])
        return Release(int(given), _grants(grants), _held(held))

    async def tick(self, backends: Iterable[Backend]) -> Heartbeat:
        """Every gateway beats with the same `policy_lease_ttl_s`: a beat's time is its expiry less the TTL."""
        known, gateways, grants, flat_held, now_ms = await self.tick_script(args=[
            self.prefix, self.gateway_id, self.epoch, self.ttl_ms, *_backend_args(backends)])
        held = {int(flat_held[i]): _held(flat_held[i + 1]) for i in range(0, len(flat_held), 2)}
        beats = {_text(gateways[i]): int(float(gateways[i + 1])) - self.ttl_ms for i in range(0, len(gateways), 2)}
        return Heartbeat(known == 1, beats, _grants(grants), held, int(now_ms))

    async def renew(self, leases: Iterable[tuple[str, int, int]]) -> tuple[int, int]:
        """Re-assert (request, backend, user) leases of running requests: how many Redis had lost, and Redis's
        clock (ms), when it did."""
        args = [arg for lease in leases for arg in lease]
        missing, now_ms = await self.renew_script(args=[self.prefix, self.gateway_id, self.ttl_ms, *args])
        return int(missing), int(now_ms)

    async def move(self, request_id: str, from_backend: int, to: Iterable[Backend]) -> int | None:
        args = [arg for backend in to for arg in (backend.backend_id, backend.max_concurrent)]
        if not args:
            return None
        moved = int(await self.move_script(args=[self.prefix, self.gateway_id, self.ttl_ms, request_id, from_backend,
                                                 *args]))
        return None if moved < 0 else moved

    async def leave(self) -> None:
        await self.leave_script(args=[self.prefix, self.gateway_id])


def fallback_share(max_concurrent: int, backend_id: int, me: str, gateways: Iterable[str],
                   held: dict[str, int], mine: int, given_unseen: int) -> int:
    """A gateway's slots of a backend while it decides alone, Redis being away.

    `max_concurrent` is split among the gateways alive at the last heartbeat (the remainder going to
    different gateways for different backends). Requests the others ran beyond their own split then run on,
    so every gateway leaves that excess free: together they never exceed `max_concurrent`, whoever holds
    it. `held` is the count per gateway Redis last told this one (at a heartbeat, or a release of its own on
    that backend); `mine` this gateway's running requests when Redis failed; `given_unseen` the slots its
    releases gave to others' requests since, of which the others can hold no more than Redis left free
    beside `mine`. (Slots that passed between other gateways, or that they took from free ones, since that
    last word are not seen.) Redis kept the backend within `max_concurrent` until it failed, so the others
    then ran at most what `mine` left: no more than that is left free for them, however stale the counts
    Redis last gave this gateway (two gateways whose last words came at different moments may each have
    been told the other held every slot)."""
    alive = sorted({*gateways, me})

    def split(gateway: str) -> int:
        if gateway not in alive:
            return 0  # gone: whatever it still held runs on until its lease expires
        count, rank = len(alive), alive.index(gateway)
        return max_concurrent // count + ((rank + backend_id) % count < max_concurrent % count)

    others = {gateway: held.get(gateway, 0) for gateway in {*alive, *held} - {me}}
    excess = sum(max(0, slots - split(gateway)) for gateway, slots in others.items())
    gained = min(given_unseen, max(0, max_concurrent - mine - sum(others.values())))
    # ... at worst all by the gateway with the least room below its split.
    room = min((max(0, split(gateway) - slots) for gateway, slots in others.items()), default=0)
    ran_by_others = max(0, max_concurrent - mine)
    return max(0, split(me) - min(excess + max(0, gained - room), ran_by_others))
