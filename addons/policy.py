"""Policy: rate limits per key and monthly token budgets, checked before a request queues.

Admission, in this order, each refusal a 429 in the caller's dialect with `Retry-After`:

1. requests per window per API key (the key's `rpm_override`, else the user's, else the role's
   `rate_limit_rpm`), over an exact sliding window of `rate_limit_window_s`; Retry-After is when
   a slot of the window frees;
2. what the request may spend at most (`reservation`: prompt estimate plus `max_tokens`, or the
   model's context without it, times `n`) reserved from the user's budget for this month;
   `insufficient_quota`, Retry-After the start of next month, and `x-should-retry: false` so the
   OpenAI SDK does not retry what only an admin can fix.

Concurrency is not a refusal here: the cap on a user's running requests is the fair queue's (Gate),
and requests above it wait there.

A request counts toward its key's rate only once every step admitted it and the gateway went on to
serve it: a refusal, here or later by the Gate (queue full, no backend, unknown model, maximum
wait), gives back everything admission took (the rate token and the reservation). The rate limit
is for floods of requests, not a penalty on retries of refused ones. Reserving the most a request
may spend before it runs is what keeps fifty concurrent requests from overrunning a budget: they are
admitted only while the reservations fit, and each is settled to its real cost when it ends.

Settling happens in this addon's `response` and `error` hooks, exactly once per request (a flag on
its `Admission`), whichever way it ends: mitmproxy fires `response` for every answer (ours,
Gate's, the engine's) and `error` for every other end (backend failure, a client gone mid-stream,
a flow killed while queued). The real usage is the response translator's exact count. Translate
sits before Policy in the addon list and translates a whole answer in its own `response` hook, so
the counts are there when Policy's hook runs. Without counts (the engine sent none, or the stream
broke off before them) a request that delivered an answer is charged its expected cost (the
scheduler's estimate, at most its reservation), one that delivered nothing is charged nothing.

Where the counters live: in process without `REDIS_URL`; in Redis with it (`addons/limits.py` has
the key layout), so every gateway sharing that Redis enforces the same limits and budgets. What a
request holds in Redis is a lease renewed every `policy_lease_ttl_s / 3` while it runs: a killed
gateway's reservations vanish within `policy_lease_ttl_s`. If Redis fails (refused, timed out after
`redis_timeout_ms`) during admission, every limit falls back to this process's own counters for
`redis_retry_s` and a warning is logged: each gateway then enforces the limits alone, rather than
failing every request or letting all through. Each store misses what was spent on the other while it
was not in use, so after every switch of store a user's ledger first takes `used` from the database
again (the larger of the two: the database lags by the writer's batch). A failed release, settle or
renewal only logs: what it was about expires with its lease.

Budgets come from the database (`Quota` rows, created on first use for the month with
`budget_for(role, override, DEFAULT_TOKEN_BUDGET)`), read off the event loop and re-read every
`quota_refresh_s` so an approved top-up lands within seconds; used tokens and a snapshot of the
reserved ones are written back through the StoreWriter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import peewee
from mitmproxy import ctx, exceptions, http

from addons.auth import Principal
from addons.context import RequestContext, context_of
from addons.limits import (
    REFUSED,
    RESERVED,
    UNKNOWN,
    LocalCounters,
    RedisCounters,
    ReserveOutcome,
    connect,
    quota_keys_expire_at,
    shared_failures,
)
from addons.metrics import REFUSALS
from addons.registry import BackendRegistry
from addons.replies import reply_error
from addons.settings import Environment
from addons.writer import StoreWriter, Write, writes, writes_together
from scheduler.cost import expected_cost
from scheduler.limits import UNLIMITED, limit_for, parse_role_limits, retry_after_header
from scheduler.quota import budget_for, next_period_start, period_of
from store.models import ROLES, Quota, get_or_create_quota, utcnow
from translators.canonical import CanonicalRequest
from translators.errors import GatewayError

log = logging.getLogger(__name__)

T = TypeVar("T")
Counters = LocalCounters | RedisCounters

# A ledger nobody used for this long drops out of the background budget refresh (it is re-read
# from the database the next time its user comes back).
LEDGER_IDLE_S = 3600
BUDGET_QUERY_CHUNK = 500
# The heartbeat stops renewing a request's Redis leases after this long: should a request ever end
# without mitmproxy telling us, its slot then frees itself instead of being renewed for ever.
LEASE_RENEWAL_LIMIT_S = 4 * 3600
# Requests per minute per API key, by role. The rate limit stops floods (a script in a tight loop), not
# contention: the fair queue shares the slots, and refused requests do not count. A student may queue
# a batch of 200 at once (the waiting bound, addons/gate.py, is 256) and a faculty member run a
# pipeline of 20 small requests a second. docs/scheduler.md, "Limits", says why.
DEFAULT_RPM = "admin=3000,faculty=1200,staff=900,student=600"
# What a request without `max_tokens` may generate when no backend says the model's context length.
UNKNOWN_CONTEXT_TOKENS = 8192
# Whole numbers: mitmproxy's `--set` cannot parse a float option.
POSITIVE_OPTIONS = ("rate_limit_window_s", "policy_lease_ttl_s", "quota_refresh_s", "redis_timeout_ms", "redis_retry_s")

BUDGET_UNAVAILABLE = GatewayError(503, "cannot check your token budget right now; retry shortly",
                                  headers={"Retry-After": "1"})


@dataclass(eq=False)
class Admission:
    """What admission took for one request, so that settling gives each thing back exactly once."""

    lease: str  # the request id: its entry in every counter it holds
    user_id: int
    key_id: int = 0
    rate_store: Counters | None = None  # holds its place in the key's rate window
    quota_store: Counters | None = None  # holds its reservation
    period: str = ""
    reserved: int = 0
    settled: bool = False
    admitted_at: float = field(default_factory=time.monotonic)


def choices_of(canonical: CanonicalRequest) -> int:
    """How many answers the request asks for (OpenAI's `n`; Ollama has one)."""
    n = canonical.body.get("n") if isinstance(canonical.body, dict) else None
    return n if isinstance(n, int) and n >= 1 else 1


def reservation(canonical: CanonicalRequest, context_length: int | None) -> int:
    """The most the request may spend: its prompt estimate plus its `max_tokens` (without one, the model's
    context, as the engine may generate that far), once per choice. Embeddings, scores and tokenizations
    spend their input alone."""
    prompt = canonical.estimated_prompt_tokens
    if not canonical.generates:
        return max(1, prompt)
    completion = canonical.max_tokens
    if completion is None:
        completion = context_length or UNKNOWN_CONTEXT_TOKENS
    return max(1, choices_of(canonical) * (prompt + completion))


def request_cost(canonical: CanonicalRequest) -> int:
    """What admission reserves for the request when its model's context is not known."""
    return reservation(canonical, None)


def tokens_to_charge(context: RequestContext, admission: Admission, delivered: bool) -> int:
    """The engine's exact count; without one, the expected cost if the caller got an answer, else 0."""
    usage = context.translator.usage if context.translator is not None else None
    if usage is not None:
        return usage.prompt_tokens + usage.completion_tokens
    if not delivered or context.canonical is None:
        return admission.reserved if delivered else 0
    canonical = context.canonical
    expected = expected_cost(canonical.estimated_prompt_tokens, canonical.max_tokens,
                             generates=canonical.generates)
    return min(admission.reserved, choices_of(canonical) * expected)


def load_quota(user_id: int, role: str, override: int | None, period: str, default_budget: int) -> tuple[int, int]:
    """(budget, used) of the user's row for `period`, created with the role's budget if there is none
    (race-safe against another gateway or the admin app). Runs in a worker thread."""
    row = get_or_create_quota(user_id, period, budget_for(role, override, default_budget))
    return row.budget, row.used


def budgets_of(period: str, user_ids: list[int]) -> dict[int, int]:
    """Current budgets (approved top-ups included) of these users' rows for `period`; runs in a worker thread."""
    budgets: dict[int, int] = {}
    for start in range(0, len(user_ids), BUDGET_QUERY_CHUNK):
        chunk = user_ids[start:start + BUDGET_QUERY_CHUNK]
        rows = Quota.select(Quota.user, Quota.budget).where((Quota.period == period) & Quota.user.in_(chunk))
        budgets.update({row.user_id: row.budget for row in rows})
    return budgets


@writes("quota.add_used")
def write_add_used(data: dict) -> None:
    write_all_add_used([data])


@writes_together("quota.add_used")
def write_all_add_used(batch: list[dict]) -> None:
    """One update per user and period, however many requests of theirs the batch settles."""
    totals: dict[tuple[int, str], int] = {}
    for data in batch:
        totals[data["user_id"], data["period"]] = totals.get((data["user_id"], data["period"]), 0) + data["tokens"]
    for (user_id, period), tokens in totals.items():
        Quota.update(used=Quota.used + tokens).where((Quota.user == user_id) & (Quota.period == period)).execute()


@writes("quota.set_reserved")
def write_set_reserved(data: dict) -> None:
    Quota.update(reserved=data["tokens"]).where(
        (Quota.user == data["user_id"]) & (Quota.period == data["period"])).execute()


def add_used(user_id: int, period: str, tokens: int) -> Write:
    """Usage as data, so a write the database cannot take now waits in the spill file, never lost."""
    return Write("quota.add_used", {"user_id": user_id, "period": period, "tokens": tokens})


def set_reserved(user_id: int, period: str, tokens: int) -> Write:
    return Write("quota.set_reserved", {"user_id": user_id, "period": period, "tokens": tokens})


def renewal_of(now: dt.datetime) -> tuple[dt.datetime, float]:
    """When the current period's budget renews, and the seconds until then."""
    renews = next_period_start(now)
    return renews, (renews - now).total_seconds()


class Policy:
    """Admits an inference request within its key's rate and its user's budget."""

    def __init__(self, writer: StoreWriter, environment: Environment, registry: BackendRegistry) -> None:
        self.writer = writer
        self.registry = registry  # the models' context lengths, for what a request without max_tokens may spend
        self.default_budget = environment.default_token_budget
        self.redis_url = environment.redis_url
        self.local = LocalCounters()
        self.shared: RedisCounters | None = None
        self.shared_retry_at = 0.0
        self.rpm_limits: dict[str, int] = {}
        self.held: dict[str, Admission] = {}  # admitted requests not yet settled, by lease
        self.ledgers: dict[tuple[int, str], float] = {}  # (user, period) → last admission, for the refresh
        self.reserved_written: dict[tuple[int, str], int] = {}
        self.loading: dict[tuple[int, str], asyncio.Future] = {}
        self.admitting: dict[int, list] = {}  # user → [its admission lock, requests holding or awaiting it]
        # After the counting moved from one store to the other: the ledgers that took `used` from the
        # database since, in the store now counting (None: no switch, nothing to reload).
        self.last_store_shared: bool | None = None
        self.reloaded: set[tuple[int, str]] | None = None
        self.settling: set[asyncio.Task] = set()
        self.background: list[asyncio.Task] = []

    def load(self, loader):
        loader.add_option(
            "rate_limit_rpm", str, DEFAULT_RPM,
            "Requests per API key per rate_limit_window_s, by role (ROLE=N for every role; 0: no limit). "
            "A key's rpm_override, else its user's, wins over the role's number. Only requests the gateway "
            "admitted count: a refused one (any 429 or 503 before a backend slot) is given back.",
        )
        loader.add_option(
            "rate_limit_window_s", int, 60,
            "The sliding window rate_limit_rpm counts over, in seconds (60: requests per minute).",
        )
        loader.add_option(
            "policy_lease_ttl_s", int, 30,
            "With REDIS_URL: a request's token reservation expires this long after its "
            "gateway last renewed them (every third of it), so a killed gateway locks nobody out for longer.",
        )
        loader.add_option(
            "quota_refresh_s", int, 5,
            "Seconds between re-reads of token budgets from the database (an approved top-up lands within it).",
        )
        loader.add_option(
            "redis_key_prefix", str, "mindrouter",
            "With REDIS_URL: the prefix of every Redis key the gateway writes; gateways that share limits share it.",
        )
        loader.add_option(
            "redis_timeout_ms", int, 500,
            "With REDIS_URL: longest a Redis command may take, in milliseconds, before the gateway falls back to "
            "in-process counters.",
        )
        loader.add_option(
            "redis_retry_s", int, 5,
            "With REDIS_URL: after a Redis failure, limits are counted in process for this long, then Redis is "
            "tried again.",
        )

    def configure(self, updated):
        if "rate_limit_rpm" in updated or not self.rpm_limits:
            try:
                self.rpm_limits = parse_role_limits(ctx.options.rate_limit_rpm, ROLES)
            except ValueError as error:
                raise exceptions.OptionsError(f"rate_limit_rpm: {ctx.options.rate_limit_rpm!r}: {error}") from None
        for name in POSITIVE_OPTIONS:
            if name in updated and not getattr(ctx.options, name) > 0:
                raise exceptions.OptionsError(f"{name}: {getattr(ctx.options, name)!r} is not a whole number ≥ 1")
        if "redis_key_prefix" in updated and not ctx.options.redis_key_prefix.strip():
            raise exceptions.OptionsError("redis_key_prefix: must not be empty (e.g. 'mindrouter')")

    @property
    def redis_timeout_s(self) -> float:
        return ctx.options.redis_timeout_ms / 1000

    def running(self):
        if self.redis_url and self.shared is None:
            client = connect(self.redis_url, self.redis_timeout_s)
            self.shared = RedisCounters(client, ctx.options.redis_key_prefix)
            log.info("policy: limits and budgets shared through Redis (key prefix %r)", ctx.options.redis_key_prefix)
        loop = asyncio.get_running_loop()
        self.background = [loop.create_task(self.renew_forever()), loop.create_task(self.refresh_forever())]

    async def done(self):
        for task in self.background:
            task.cancel()
        if self.settling:
            await asyncio.wait(self.settling, timeout=2)
        if self.shared is not None:
            await self.shared.client.aclose()

    # ---- admission -------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if (flow.response or context is None or context.route.kind != "inference"
                or context.principal is None or context.canonical is None):
            return
        admission = Admission(context.request_id, context.principal.user_id, context.principal.key_id)
        context.admission = admission
        cost = reservation(context.canonical, self.registry.context_length(context.model or context.canonical.model))
        refusal = await self.admit_in_order(admission, context.principal, cost)
        if refusal is not None:
            self.settle(admission, 0, refused=True)  # give back what the earlier steps took
            log.info("request %s refused: %s", context.request_id, refusal.message)
            REFUSALS.labels(refusal.code, context.principal.role).inc()
            reply_error(flow, context.dialect, refusal)

    async def admit_in_order(self, admission: Admission, principal: Principal, cost: int) -> GatewayError | None:
        """Admit one user's requests one at a time, in the order they arrived: with Redis each step is a
        round trip, and replies on different connections would otherwise queue a script's requests in
        an order of their own (the fair queue serves a user's requests in the order they were queued)."""
        entry = self.admitting.setdefault(principal.user_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:  # asyncio.Lock wakes its waiters first in, first out
                return await self.admit(admission, principal, cost)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self.admitting[principal.user_id]

    async def admit(self, admission: Admission, principal: Principal, cost: int) -> GatewayError | None:
        """The steps in order; the first refusal ends admission (the caller gives back the rest)."""
        return (await self.within_rate(admission, principal)
                or await self.within_budget(admission, principal, cost))

    async def within_rate(self, admission: Admission, principal: Principal) -> GatewayError | None:
        rpm = limit_for(principal.role, principal.rpm_override, self.rpm_limits)
        if rpm == UNLIMITED:
            return None
        window_s = ctx.options.rate_limit_window_s
        store, wait = await self.counted(
            "rate limit", lambda c: c.take_rate(principal.key_id, rpm, window_s, admission.lease))
        if wait <= 0:
            admission.rate_store = store
            self.held[admission.lease] = admission
            return None
        return GatewayError(
            429, f"rate limit reached: API key mr_{principal.key_prefix}_… may make {rpm} requests per "
                 f"{window_s:g} s; retry in {retry_after_header(wait)} s",
            code="rate_limit_exceeded", headers={"Retry-After": retry_after_header(wait)})

    async def within_budget(self, admission: Admission, principal: Principal, cost: int) -> GatewayError | None:
        now = utcnow()
        user_id, period, lease = principal.user_id, period_of(now), admission.lease
        ttl_s = ctx.options.policy_lease_ttl_s
        store, outcome = await self.counted("token budget", lambda c: c.reserve(user_id, period, cost, lease, ttl_s))
        if outcome.state != UNKNOWN and self.reloaded is not None and (user_id, period) not in self.reloaded:
            # The first request since the counting changed store: decide on the ledger as the database has it.
            if outcome.state == RESERVED:
                await self.quietly(store, "quota settle", store.settle(user_id, period, lease, 0))
            await self.reload_used(principal, period, store)
            store, outcome = await self.counted(
                "token budget", lambda c: c.reserve(user_id, period, cost, lease, ttl_s))
        if outcome.state == UNKNOWN:  # this user's first request of the period here: load the ledger
            try:
                budget, used = await self.quota_row(principal, period)
            except (peewee.PeeweeException, OSError) as exc:
                log.warning("cannot read the token budget of user %s: %s", user_id, exc)
                return BUDGET_UNAVAILABLE
            expires_at = quota_keys_expire_at(period)

            async def start_and_reserve(c: Counters) -> ReserveOutcome:
                await c.start_ledger(user_id, period, budget, used, expires_at)
                return await c.reserve(user_id, period, cost, lease, ttl_s)

            store, outcome = await self.counted("token budget", start_and_reserve)
            if outcome.state == UNKNOWN:  # only if someone deleted the keys between the two calls
                return BUDGET_UNAVAILABLE
            if self.reloaded is not None:
                self.reloaded.add((user_id, period))
        self.ledgers[user_id, period] = time.monotonic()  # refused ones too: a top-up must reach them
        if outcome.state == REFUSED:
            renews, seconds = renewal_of(now)
            return GatewayError(
                429, f"token budget exhausted: {principal.username} has {max(0, outcome.remaining)} tokens left "
                     f"for {period} and this request may spend {cost} (its prompt and max_tokens, or the "
                     "model's context without max_tokens, for each of its n choices): set max_tokens lower, or "
                     f"wait for the budget to renew {renews:%Y-%m-%d} 00:00 UTC (or ask an admin for more)",
                code="insufficient_quota", error_type="insufficient_quota",
                headers={"Retry-After": retry_after_header(seconds), "x-should-retry": "false"})
        admission.quota_store, admission.period, admission.reserved = store, period, cost
        self.held[lease] = admission
        return None

    async def reload_used(self, principal: Principal, period: str, store: Counters) -> None:
        """A ledger of the store now counting takes `used` from the database, once after each switch of
        store: it missed what was spent while the other store counted."""
        try:
            _, used = await self.quota_row(principal, period)
            async with asyncio.timeout(2 * self.redis_timeout_s):
                await store.sync_used(principal.user_id, period, used)
        except (peewee.PeeweeException, *shared_failures()) as exc:
            log.warning("cannot re-read the tokens user %s used (%s: %s); its ledger stays as it is",
                        principal.user_id, type(exc).__name__, exc)
            return
        if self.reloaded is not None:
            self.reloaded.add((principal.user_id, period))

    def note_store(self, store: Counters) -> None:
        """Count in `store` from now on; a switch from the other one means every ledger must reload."""
        if self.last_store_shared is not None and self.last_store_shared != store.shared:
            self.reloaded = set()
            log.info("policy: counting moved to %s counters; ledgers re-read what was used from the database",
                     "shared" if store.shared else "in-process")
        self.last_store_shared = store.shared

    async def quota_row(self, principal: Principal, period: str) -> tuple[int, int]:
        """One database read per (user, period) however many requests need it at once."""
        key = (principal.user_id, period)
        if pending := self.loading.get(key):
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self.loading[key] = future
        try:
            row = await asyncio.to_thread(load_quota, principal.user_id, principal.role,
                                          principal.token_budget_override, period, self.default_budget)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lone caller leaves no "never retrieved" warning
            raise
        finally:
            del self.loading[key]
        future.set_result(row)
        return row

    async def counted(self, step: str, run: Callable[[Counters], Awaitable[T]]) -> tuple[Counters, T]:
        """Run one step on the shared store when there is one and it answers, else on this process's."""
        if self.shared is not None and time.monotonic() >= self.shared_retry_at:
            try:
                async with asyncio.timeout(2 * self.redis_timeout_s):
                    answer = await run(self.shared)
                self.note_store(self.shared)
                return self.shared, answer
            except shared_failures() as exc:
                self.shared_failed(step, exc)
        self.note_store(self.local)
        return self.local, await run(self.local)

    def shared_failed(self, what: str, exc: BaseException) -> None:
        """An admission step failed on Redis: count in this process for a while instead of paying timeouts."""
        self.shared_retry_at = time.monotonic() + ctx.options.redis_retry_s
        log.warning("Redis failed during %s (%s: %s); counting limits in this process for %g s",
                    what, type(exc).__name__, exc, ctx.options.redis_retry_s)

    @staticmethod
    def shared_missed(what: str, exc: BaseException) -> None:
        """A settle or background call failed on Redis: what it was about expires with its lease anyway.
        It does not switch admissions to in-process counters; only an admission step's own failure does."""
        log.warning("Redis failed during %s (%s: %s); leases left there expire on their own",
                    what, type(exc).__name__, exc)

    # ---- settling --------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.admission is None or context.admission.settled:
            return
        delivered = context.backend is not None and flow.response.status_code < 400
        # Never granted a slot and answered with an error: the Gate refused it (queue full, no backend,
        # unknown model, maximum wait): it gives back its place in the rate window too.
        refused = context.granted_at is None and flow.response.status_code >= 400
        self.settle(context.admission, tokens_to_charge(context, context.admission, delivered), refused=refused)

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.admission is None or context.admission.settled:
            return
        delivered = context.first_byte_at is not None
        self.settle(context.admission, tokens_to_charge(context, context.admission, delivered))

    def settle(self, admission: Admission, actual: int, refused: bool = False) -> None:
        """Replace the reservation by `actual` tokens and, for a refused request, give back its place in
        the rate window; once, the counters off the hook."""
        if admission.settled:
            return
        admission.settled = True
        self.held.pop(admission.lease, None)
        if actual > 0 and admission.period:
            self.writer.submit(add_used(admission.user_id, admission.period, actual))
        if not refused:
            admission.rate_store = None  # it counts toward the rate
        if admission.rate_store is None and admission.quota_store is None:
            return
        task = asyncio.get_running_loop().create_task(self.give_back(admission, actual))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def give_back(self, admission: Admission, actual: int) -> None:
        user_id, lease = admission.user_id, admission.lease
        if admission.rate_store is not None:
            await self.quietly(admission.rate_store, "rate give-back",
                               admission.rate_store.give_back_rate(admission.key_id, lease))
        if admission.quota_store is not None:
            await self.quietly(admission.quota_store, "quota settle",
                               admission.quota_store.settle(user_id, admission.period, lease, actual))

    async def quietly(self, store: Counters, what: str, operation: Awaitable[None]) -> None:
        """A shared store that fails here is left alone: what the request held there expires with its lease."""
        try:
            async with asyncio.timeout(2 * self.redis_timeout_s):
                await operation
        except shared_failures() as exc:
            if not store.shared:
                raise
            self.shared_missed(what, exc)

    # ---- background ------------------------------------------------------------------------------

    async def renew_forever(self) -> None:
        """The heartbeat: keep the Redis leases of this gateway's live requests from expiring."""
        while True:
            await asyncio.sleep(ctx.options.policy_lease_ttl_s / 3)
            if self.shared is None:
                continue
            self.forget_ancient_admissions()
            reservations = [(a.user_id, a.period, a.lease) for a in self.held.values() if a.quota_store is self.shared]
            if not reservations:
                continue
            try:
                async with asyncio.timeout(2 * self.redis_timeout_s):
                    lost = await self.shared.renew(reservations, ctx.options.policy_lease_ttl_s)
            except shared_failures() as exc:
                self.shared_missed("lease renewal", exc)
                continue
            if lost:  # their tokens were given back there already: renewing them again would warn again
                log.warning("%d of %d Redis leases had expired before their renewal (a stall longer than "
                            "policy_lease_ttl_s, or Redis restarted); no longer renewed", len(lost), len(reservations))
                for lease in lost:
                    self.held.pop(lease, None)

    def forget_ancient_admissions(self) -> None:
        oldest = time.monotonic() - LEASE_RENEWAL_LIMIT_S
        for lease in [lease for lease, a in self.held.items() if a.admitted_at < oldest]:
            log.warning("request %s: running for over %d s; its Redis leases are no longer renewed",
                        lease, LEASE_RENEWAL_LIMIT_S)
            del self.held[lease]

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.quota_refresh_s)
            try:
                await self.refresh_budgets()
            except Exception:
                log.exception("token budget refresh failed; keeping the budgets as they are")

    async def refresh_budgets(self) -> None:
        """Re-read the budgets of recently active users, and write back a snapshot of their reserved tokens."""
        now, period = time.monotonic(), period_of(utcnow())
        for key in [k for k, last in self.ledgers.items() if k[1] != period or now - last > LEDGER_IDLE_S]:
            del self.ledgers[key]
            self.reserved_written.pop(key, None)
        self.local.sweep(period, ctx.options.rate_limit_window_s)
        keys = list(self.ledgers)
        if not keys:
            return
        budgets = await asyncio.to_thread(budgets_of, period, [user_id for user_id, _ in keys])
        by_key = {(user_id, period): budget for user_id, budget in budgets.items()}
        await self.local.set_budgets(by_key)
        store, standings = self.local, None
        if self.shared is not None and time.monotonic() >= self.shared_retry_at:
            try:
                async with asyncio.timeout(4 * self.redis_timeout_s):
                    await self.shared.set_budgets(by_key)
                    store, standings = self.shared, await self.shared.standings(keys)
            except shared_failures() as exc:
                self.shared_missed("budget refresh", exc)
        if standings is None:
            standings = await self.local.standings(keys)
        for key, ledger in standings.items():
            if self.reserved_written.get(key) != ledger.reserved:
                self.reserved_written[key] = ledger.reserved
                self.writer.submit(set_reserved(*key, ledger.reserved))
        log.debug("refreshed %d budgets (%s counters)", len(by_key), "shared" if store.shared else "local")
