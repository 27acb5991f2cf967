"""Auth: API key → Principal, with Argon2 paid once per key per process and never on the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from dataclasses import dataclass

from mitmproxy import ctx, http

from addons.context import context_of
from addons.replies import reply_error
from store import api_keys
from store.models import ApiKey, User, key_by_prefix, utcnow
from translators.errors import GatewayError

log = logging.getLogger(__name__)

REJECTED_CACHE_SIZE = 10_000


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


def verify(key: str) -> Principal | str:
    """Database lookup by prefix, then Argon2: runs in a worker thread. Returns a refusal text on failure."""
    prefix = api_keys.key_prefix(key)
    row = key_by_prefix(prefix) if prefix else None
    if row is None or not api_keys.verify_key(row.key_hash, key):
        return "invalid API key"
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

    def __init__(self) -> None:
        self.verified: dict[str, Principal] = {}
        self.rejected: OrderedDict[str, str] = OrderedDict()
        self.in_progress: dict[str, asyncio.Future] = {}

    async def principal_for(self, key: str) -> Principal | str:
        fingerprint = api_keys.key_fingerprint(key)
        if principal := self.verified.get(fingerprint):
            return principal
        if reason := self.rejected.get(fingerprint):
            return reason
        if pending := self.in_progress.get(fingerprint):  # one Argon2 per key, however many arrive at once
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self.in_progress[fingerprint] = future
        try:
            outcome = await asyncio.to_thread(verify, key)
        except Exception as exc:
            log.exception("API key verification failed")
            error = GatewayError(503, "cannot verify API keys right now; retry shortly", headers={"Retry-After": "1"})
            future.set_exception(error)
            future.exception()  # retrieved here, so a lone caller leaves no "never retrieved" warning
            raise error from exc
        finally:
            del self.in_progress[fingerprint]
        if isinstance(outcome, Principal):
            self.verified[fingerprint] = outcome
        else:
            self.remember_rejection(fingerprint, outcome)
        future.set_result(outcome)
        return outcome

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

    def running(self):
        self.revalidator = asyncio.get_running_loop().create_task(self.revalidate_forever())

    def done(self):
        if self.revalidator:
            self.revalidator.cancel()

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
            outcome = await self.keys.principal_for(key)
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        if isinstance(outcome, str):
            reply_error(flow, context.dialect, GatewayError(401, outcome, code="invalid_api_key"))
            return
        context.principal = outcome
