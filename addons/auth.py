"""Auth: API key → Principal, with Argon2 paid once per key per process and never on the event loop.

Argon2 is slow on purpose, so a caller who sends well-formed keys with random secrets could make
the gateway spend its CPU on them. Three things bound that work:

- Argon2 runs in a small pool of its own (`ARGON2_THREADS`), never in asyncio's default pool that
  database reads use, so a flood of key checks does not stall budgets, revalidation or backends.
- A failure budget per key prefix and per client address (`auth_failures_per_key_prefix`,
  `auth_failures_per_client` within `auth_failure_window_s`): once it is spent, further unknown keys
  from there are answered 429 with Retry-After before any database read or hash. A check is charged
  when it starts and refunded when it succeeds, so a burst cannot slip past together.
- A key already verified in this process is served from its SHA-256 fingerprint and is never
  gated: someone hammering a prefix with wrong secrets cannot lock out the key's holder, whose
  key was verified on first use. (A holder whose key this process has not yet seen waits at most
  the window once the hammering stops, or comes through another gateway.)

Behind a TCP balancer that hides client addresses, every caller shares one address: set
`auth_failures_per_client=0` there, or use PROXY protocol.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http

from addons.context import context_of
from addons.replies import reply_error
from scheduler.failures import FailureBudget
from scheduler.limits import retry_after_header
from store import api_keys
from store.models import ApiKey, User, key_by_prefix, utcnow
from translators.errors import GatewayError

log = logging.getLogger(__name__)

REJECTED_CACHE_SIZE = 10_000
ARGON2_THREADS = 2
INVALID_KEY = "invalid API key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: what every later addon needs to know about the user and key."""

    user_id: int
    username: str
    role: str
    weight: float
    key_id: int
    key_prefix: str
    rpm_override: int | None
    max_concurrent_override: int | None
    max_queued_override: int | None
    token_budget_override: int | None


def principal_of(key: ApiKey) -> Principal:
    user: User = key.user
    return Principal(
        user_id=user.id,
        username=user.username,
        role=user.role,
        weight=user.weight,
        key_id=key.id,
        key_prefix=key.prefix,
        rpm_override=key.rpm_override if key.rpm_override is not None else user.rpm_override,
        max_concurrent_override=user.max_concurrent_override,
        max_queued_override=user.max_queued_override,
        token_budget_override=user.token_budget_override,
    )


def refusal(key: ApiKey, now: dt.datetime) -> str | None:
    """Why a key row may not be used now, or None when it may."""
    if key.status != "active":
        return "API key has been revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "API key has expired"
    if not key.user.active:
        return "user account is disabled"
    return None


def verified_outcome(row: ApiKey) -> Principal | str:
    """The Principal of a key row whose secret matched, or why it may not be used (the user is joined)."""
    return refusal(row, utcnow()) or principal_of(row)


def still_valid(principals: list[Principal]) -> dict[int, Principal]:
    """Re-read the keys behind cached principals: the ones still usable, by key id, with fresh user data."""
    if not principals:
        return {}
    rows = ApiKey.select(ApiKey, User).join(User).where(ApiKey.id.in_([p.key_id for p in principals]))
    now = utcnow()
    return {row.id: principal_of(row) for row in rows if refusal(row, now) is None}


class KeyCache:
    """Verified keys by SHA-256 fingerprint; revalidated in the background so revocation lands in seconds."""

    def __init__(self, failures_per_prefix: int = 10, failures_per_client: int = 30,
                 failure_window_s: float = 60) -> None:
        self.verified: dict[str, Principal] = {}
        self.rejected: OrderedDict[str, str] = OrderedDict()
        self.in_progress: dict[str, asyncio.Future] = {}
        self.argon2 = ThreadPoolExecutor(ARGON2_THREADS, thread_name_prefix="argon2")
        self.set_failure_budgets(failures_per_prefix, failures_per_client, failure_window_s)

    def set_failure_budgets(self, per_prefix: int, per_client: int, window_s: float) -> None:
        self.prefix_failures = FailureBudget(per_prefix, window_s)
        self.client_failures = FailureBudget(per_client, window_s)

    def close(self) -> None:
        self.argon2.shutdown(wait=False, cancel_futures=True)

    async def principal_for(self, key: str, client_address: str = "") -> Principal | str:
        fingerprint = api_keys.key_fingerprint(key)
        if principal := self.verified.get(fingerprint):
            return principal
        if reason := self.rejected.get(fingerprint):
            return reason
        if pending := self.in_progress.get(fingerprint):  # one Argon2 per key, however many arrive at once
            return await asyncio.shield(pending)
        prefix = api_keys.key_prefix(key)
        if prefix is None:  # cannot be one of ours: no database read, no hash
            return INVALID_KEY
        now = time.monotonic()
        self.refuse_when_spent(prefix, client_address, now)
        self.prefix_failures.charge(prefix, now)
        self.client_failures.charge(client_address, now)
        future = asyncio.get_running_loop().create_future()
        self.in_progress[fingerprint] = future
        try:
            outcome = await self.verify(prefix, key)
        except Exception as exc:
            self.refund(prefix, client_address, now)  # our failure, not the caller's
            log.exception("API key verification failed")
            error = GatewayError(503, "cannot verify API keys right now; retry shortly", headers={"Retry-After": "1"})
            future.set_exception(error)
            future.exception()  # retrieved here, so a lone caller leaves no "never retrieved" warning
            raise error from exc
        finally:
            del self.in_progress[fingerprint]
        if outcome != INVALID_KEY:  # the secret matched, whatever the key's status
            self.refund(prefix, client_address, now)
        if isinstance(outcome, Principal):
            self.verified[fingerprint] = outcome
        else:
            self.remember_rejection(fingerprint, outcome)
        future.set_result(outcome)
        return outcome

    async def verify(self, prefix: str, key: str) -> Principal | str:
        """The row by prefix (a database read, in asyncio's default pool), then Argon2 (in its own pool)."""
        row = await asyncio.to_thread(key_by_prefix, prefix)
        if row is None:
            return INVALID_KEY
        matched = await asyncio.get_running_loop().run_in_executor(self.argon2, api_keys.verify_key, row.key_hash, key)
        return verified_outcome(row) if matched else INVALID_KEY

    def refuse_when_spent(self, prefix: str, client_address: str, now: float) -> None:
        """GatewayError(429) when this prefix or this address has used up its failed checks for the window."""
        for budget, key, what in ((self.prefix_failures, prefix, f"API key prefix mr_{prefix}_…"),
                                  (self.client_failures, client_address, f"address {client_address or 'unknown'}")):
            wait = budget.wait(key, now)
            if wait > 0:
                retry_after = retry_after_header(wait)
                raise GatewayError(
                    429, f"too many failed API key checks for {what}; check the key and retry in {retry_after} s",
                    code="too_many_failed_key_checks", headers={"Retry-After": retry_after})

    def refund(self, prefix: str, client_address: str, charged_at: float) -> None:
        self.prefix_failures.refund(prefix, charged_at)
        self.client_failures.refund(client_address, charged_at)

    def remember_rejection(self, fingerprint: str, reason: str) -> None:
        self.rejected[fingerprint] = reason
        while len(self.rejected) > REJECTED_CACHE_SIZE:
            self.rejected.popitem(last=False)

    async def revalidate(self) -> None:
        cached = dict(self.verified)
        valid = await asyncio.to_thread(still_valid, list(cached.values()))
        for fingerprint, principal in cached.items():
            if principal.key_id in valid:
                self.verified[fingerprint] = valid[principal.key_id]
            else:
                self.verified.pop(fingerprint, None)
                self.remember_rejection(fingerprint, "API key has been revoked or its user disabled")
        # A rejection may stop being true (an expired key extended, a user re-enabled): forget them too.
        self.rejected.clear()


def presented_key(request: http.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


class Auth:
    """Attaches the caller's Principal to the request context, or answers 401 in the caller's dialect."""

    def __init__(self) -> None:
        self.keys = KeyCache()
        self.revalidator: asyncio.Task | None = None

    def load(self, loader):
        loader.add_option(
            "key_revalidate_s", int, 2,
            "Seconds between background re-checks of cached API keys; a revoked key or disabled user "
            "stops working within this time plus one database read.",
        )
        loader.add_option(
            "auth_failure_window_s", int, 60,
            "The window, in seconds, that auth_failures_per_key_prefix and auth_failures_per_client count over.",
        )
        loader.add_option(
            "auth_failures_per_key_prefix", int, 10,
            "Failed checks of keys with one prefix (mr_<prefix>_…) per auth_failure_window_s; beyond it, unknown "
            "keys with that prefix get 429 without an Argon2 check (keys already verified still pass). 0: no limit.",
        )
        loader.add_option(
            "auth_failures_per_client", int, 30,
            "Failed API key checks from one client address per auth_failure_window_s; beyond it, unknown keys "
            "from there get 429 without an Argon2 check. 0: no limit (behind a balancer that hides addresses).",
        )

    def configure(self, updated):
        names = ("auth_failure_window_s", "auth_failures_per_key_prefix", "auth_failures_per_client")
        for name in names:
            minimum = 1 if name == "auth_failure_window_s" else 0
            if name in updated and getattr(ctx.options, name) < minimum:
                raise exceptions.OptionsError(f"{name}: {getattr(ctx.options, name)!r} is not a whole number ≥ {minimum}")
        if any(name in updated for name in names):
            self.keys.set_failure_budgets(ctx.options.auth_failures_per_key_prefix,
                                          ctx.options.auth_failures_per_client, ctx.options.auth_failure_window_s)

    def running(self):
        self.revalidator = asyncio.get_running_loop().create_task(self.revalidate_forever())

    def done(self):
        if self.revalidator:
            self.revalidator.cancel()
        self.keys.close()

    async def revalidate_forever(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.key_revalidate_s)
            try:
                await self.keys.revalidate()
            except Exception:
                log.exception("API key revalidation failed; keeping the cache as it is")

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or not context.route.needs_key:
            return
        key = presented_key(flow.request)
        if key is None:
            reply_error(flow, context.dialect, GatewayError(
                401, "missing API key: send it as 'Authorization: Bearer mr_...'", code="missing_api_key"))
            return
        try:
            outcome = await self.keys.principal_for(key, context.client_address)
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        if isinstance(outcome, str):
            reply_error(flow, context.dialect, GatewayError(401, outcome, code="invalid_api_key"))
            return
        context.principal = outcome
