"""Gate: hold each inference request until the fair-share scheduler grants it a backend slot.

The scheduler (scheduler/, pure) decides; this addon feeds it what the registry knows about the
backends, turns its grants into resumed flows, and gives every slot back exactly once: when the
answer has been delivered, when the flow errors, or when the client leaves while queued.

Per-user limits live here, in the fair queue, because they must never lock a user out of it: a user
at its cap on running requests (`max_concurrent_per_user`) waits in its queue while the others take
the free slots, and only a request beyond its bound on waiting ones (`max_queued_per_user`) is
refused, with a Retry-After of when one of its places likely frees (docs/scheduler.md, "Limits").

With REDIS_URL the gateways share one queue and one slot table in Redis (`addons/cluster.py`): a
request still queues here (its bounds, its wait limit, the dashboards' snapshot), and is also
registered there, where whichever gateway finds a free slot grants it to the flow due next, cluster
wide. Grants for this gateway's requests come back in script replies, over pub/sub, or with the
next heartbeat. When Redis fails, this gateway decides alone on its share of each backend
(`max_concurrent` divided among the gateways alive at the last heartbeat), and when Redis answers
again it registers its running and waiting requests there afresh before it takes grants from it
(docs/scheduler.md, "Several gateways").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from itertools import count
from typing import NamedTuple

from mitmproxy import ctx, exceptions, http

from addons.cluster import Backend, Grant, Heartbeat, SharedQueue, fallback_share
from addons.context import RequestContext, client_left, context_of, drop
from addons.limits import connect, shared_failures
from addons.metrics import IN_FLIGHT, QUEUE_WAIT, QUEUED, REFUSALS, series
from addons.registry import BackendRegistry, BackendView, model_aliases
from addons.replies import reply_error
from addons.writer import StoreWriter
from scheduler import BackendState, NoBackend, QueueFull, Scheduler, SchedulerConfig, expected_cost
from scheduler.backends import Slot, preference
from scheduler.breaker import HALF_OPEN
from scheduler.limits import limit_for, parse_role_limits
from store.models import ROLES, QueueSnapshot, utcnow
from telemetry_agent.client import summarize
from translators.canonical import PASSTHROUGH_KINDS
from translators.errors import GatewayError

log = logging.getLogger(__name__)

BACKEND_GONE = GatewayError(503, "the backend chosen for this request was just removed; retry",
                            headers={"Retry-After": "1"})
# Per role. Running: requests holding a backend slot at once; more wait in the user's queue. Waiting:
# requests in the queue; only one beyond it is refused (429). A student may queue a batch of 200 at
# once; a held request costs the gateway ~30 kB. docs/scheduler.md, "Limits", says why these numbers.
DEFAULT_MAX_RUNNING = "admin=32,faculty=16,staff=8,student=4"
DEFAULT_MAX_WAITING = "admin=1024,faculty=512,staff=384,student=256"
TICK_S = 0.25  # how often queued requests are checked against the wait limit
SNAPSHOT_EVERY_TICKS = 4  # the live queue the admin app shows is at most this many ticks old
# Reconnected to Redis, a gateway grants from the shared table again once every gateway alive before the
# outage has beaten since; one still missing from Redis this long after is taken for dead (`Gate.may_rejoin`).
RECONNECT_GRACE_S = 2.0


def write_snapshot(gateway: str, snapshot: dict) -> None:
    """Replace this gateway's row of the live queue table (runs on the writer thread)."""
    QueueSnapshot.insert(gateway=gateway, taken_at=utcnow(), data=json.dumps(snapshot)).on_conflict_replace().execute()


@dataclass
class Waiter:
    context: RequestContext
    client_id: str
    cost: float
    cap: int  # the user's running cap (0: none)
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Entry(NamedTuple):
    """A request registered in the shared queue, until it is granted or taken out."""

    text: str  # as the flow's list holds it: `cancel` names it
    user_id: int
    model: str


def backend_state(view: BackendView) -> BackendState:
    """What the scheduler needs to know of a backend: its models (every spelling serves), what it holds in
    memory, and the load its last poll and its GPUs' agent reported, to choose among backends.

    A backend whose breaker is half-open takes one request, the probe.
    """
    probing = view.breaker.state == HALF_OPEN
    return BackendState(
        backend_id=view.id,
        models=frozenset(alias for name in view.models for alias in model_aliases(name)),
        resident=frozenset(alias for name, m in view.models.items() if m.resident for alias in model_aliases(name)),
        models_held=sum(1 for m in view.models.values() if m.resident),
        max_concurrent=min(view.max_concurrent, 1) if probing else view.max_concurrent,
        healthy=view.healthy and view.breaker.allows(time.monotonic()),
        enabled=view.enabled,
        draining=view.draining,
        waiting=view.load.waiting or 0,
        kv_cache_usage=view.load.kv_cache_usage,
        gpu_utilization=summarize(view.gpus).gpu_utilization if view.gpus else None,
        latency_ema_ms=view.latency_ema_ms,
        priority=view.priority,
    )


def capability_refusal(canonical, model: str, described: list[tuple[str, set[str]]]) -> str | None:
    """Why no backend serving the model can take this request (None: one can, or one does not say).

    Each engine's own rule: Ollama embeds with any model it has (its embed handler asks for no
    capability) but completes only with a model that says `completion`; vLLM serves an API only when
    its runner routes it (a pooling runner embeds, a generating one completes)."""
    refusals = [engine_refusal(canonical, model, engine, capabilities) for engine, capabilities in described]
    return refusals[0] if refusals and all(refusals) else None


def engine_refusal(canonical, model: str, engine: str, capabilities: set[str]) -> str | None:
    if canonical.kind in PASSTHROUGH_KINDS:  # vLLM's own APIs, routed only by a runner that serves them
        if engine != "vllm":
            return f"model {model!r} is served by Ollama, which has no {canonical.kind} API"
        if capabilities and canonical.kind not in capabilities:
            return f"model {model!r} does not serve {canonical.kind} (its vLLM node's runner does not route it)"
        return None
    if not capabilities:
        return None
    if canonical.kind == "embedding":
        if engine == "vllm" and "embedding" not in capabilities:
            return f"model {model!r} does not produce embeddings (its vLLM node does not run a pooling model)"
        return None
    if "completion" not in capabilities:
        return f"model {model!r} is an embedding model: it cannot {canonical.kind}"
    if engine == "ollama" and canonical.images and "vision" not in capabilities:
        return f"model {model!r} does not accept images"
    if engine == "ollama" and canonical.tools and "tools" not in capabilities:
        return f"model {model!r} does not support tools"
    return None


class Gate:
    def __init__(self, registry: BackendRegistry, writer: StoreWriter, fairness_window_s: float,
                 redis_url: str | None = None) -> None:
        self.registry = registry
        self.writer = writer
        self.ticks = count()
        self.fairness_window_s = fairness_window_s
        self.scheduler = Scheduler(SchedulerConfig(fairness_window_s=fairness_window_s))
        self.waiters: dict[str, Waiter] = {}
        self.queued_by_client: dict[str, set[str]] = {}  # client connection id → its queued request ids
        self.transfers: dict[str, tuple[frozenset[int], asyncio.Future]] = {}  # failing over, waiting for a slot
        self.ticker: asyncio.Task | None = None
        self.running_limits: dict[str, int] = {}
        self.waiting_limits: dict[str, int] = {}
        self.redis_url = redis_url
        self.queue: SharedQueue | None = None
        self.shared = False  # grants come from the shared queue now; otherwise this process decides alone
        self.reconnected_at: int | None = None  # Redis answered again then (ms, its clock): share once `may_rejoin`
        self.registered = False  # Redis has known this gateway's epoch: not knowing it any more means data lost
        self.gateways: dict[str, int] = {}  # alive at the last heartbeat, this one included → when each last beat
        self.awaited: set[str] = set()  # alive before Redis failed: rejoin once they are back (or expired)
        self.held: dict[int, dict[str, int]] = {}  # as Redis last told: backend → gateway → slots held
        self.given = Counter()  # backend → slots this gateway's releases gave to other gateways' requests
        self.given_when_told = Counter()  # ... as they were when Redis last told `held`
        self.running_when_failed = Counter()  # backend → this gateway's requests running when Redis failed
        self.answered_since_failure = True  # a heartbeat succeeded since `running_when_failed` was taken
        self.entries: dict[str, Entry] = {}
        self.renewed_at = 0.0
        self.beating: asyncio.Task | None = None
        self.listener: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        registry.listeners.append(self.backends_changed)

    def load(self, loader):
        loader.add_option("scheduler_quantum", int, 1000,
                          "Tokens a weight-1 user earns per round-robin visit (docs/scheduler.md).")
        loader.add_option("scheduler_burst_cap", int, 4000,
                          "Most burst credit a user returning from idle may hold, in tokens per unit of weight.")
        loader.add_option(
            "max_concurrent_per_user", str, DEFAULT_MAX_RUNNING,
            "Requests one user may have running (holding a backend slot) at once, by role (ROLE=N for every "
            "role; 0: no cap); more wait in the user's queue. The user's max_concurrent_override wins. Per "
            "gateway process.")
        loader.add_option(
            "max_queued_per_user", str, DEFAULT_MAX_WAITING,
            "Requests one user may have waiting for a slot, by role (ROLE=N for every role; 0: no bound); only "
            "a request beyond it gets 429, with a Retry-After of when one of the user's places likely frees.")
        loader.add_option("scheduler_max_wait_s", int, 300,
                          "Longest a request waits for a backend slot before it gets 503 with Retry-After.")

    def configure(self, updated):
        for name, target in (("max_concurrent_per_user", "running_limits"), ("max_queued_per_user", "waiting_limits")):
            if name in updated or not getattr(self, target):
                try:
                    setattr(self, target, parse_role_limits(getattr(ctx.options, name), ROLES))
                except ValueError as error:
                    raise exceptions.OptionsError(f"{name}: {getattr(ctx.options, name)!r}: {error}") from None
        if not any(name.startswith("scheduler_") for name in updated):
            return
        try:
            config = SchedulerConfig(
                quantum=ctx.options.scheduler_quantum,
                # Several gateways: the shared queue's start tags put a user back from idle first in line.
                burst_cap=0 if self.redis_url else ctx.options.scheduler_burst_cap,
                fairness_window_s=self.fairness_window_s,
                max_wait_s=ctx.options.scheduler_max_wait_s,
            )
        except ValueError as error:
            raise exceptions.OptionsError(str(error)) from None
        self.scheduler.reconfigure(config, time.monotonic())

    async def running(self):
        loop = asyncio.get_running_loop()
        self.ticker = loop.create_task(self.tick_forever())
        if self.redis_url and self.queue is None:
            gateway_id = f"{socket.gethostname()}:{ctx.options.listen_port}:{os.getpid()}"
            client = connect(self.redis_url, ctx.options.redis_timeout_ms / 1000)
            self.queue = SharedQueue(client, ctx.options.redis_key_prefix, gateway_id, ctx.options.policy_lease_ttl_s)
            self.listener = loop.create_task(self.listen_forever())
            await self.heartbeat()

    async def done(self):
        """After Drain: the queue is empty and what ran has ended. Give the last slots back, leave the cluster."""
        for task in (self.ticker, self.listener, self.beating):
            if task:
                task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2 * ctx.options.redis_timeout_ms / 1000)
        if self.queue is not None:
            try:
                async with self.redis_deadline():
                    await self.queue.leave()
            except shared_failures() as exc:
                log.warning("cannot leave the shared queue (%s: %s); this gateway's entries expire with its heartbeat",
                            type(exc).__name__, exc)
            await self.queue.client.aclose()

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def backends_changed(self) -> None:
        states = (backend_state(view) for view in self.registry.views.values())
        if self.queue is not None and not self.shared:  # alone, on this gateway's share of each backend
            states = (dataclasses.replace(s, max_concurrent=self.share_of(s)) for s in states)
        self.scheduler.update_backends(states)
        self.wake(time.monotonic())

    def share_of(self, state: BackendState) -> int:
        """This gateway's slots of a backend while it decides alone (`addons.cluster.fallback_share`); none
        once Redis answers again: from then on the slots it grants are those of the shared table."""
        if self.reconnected_at is not None:
            return 0
        backend_id = state.backend_id
        return fallback_share(state.max_concurrent, backend_id, self.queue.gateway_id, self.gateways,
                              self.held.get(backend_id, {}), self.running_when_failed[backend_id],
                              self.given[backend_id] - self.given_when_told[backend_id])

    def tick(self) -> None:
        now = time.monotonic()
        if self.queue is not None and (self.beating is None or self.beating.done()):
            self.beating = asyncio.get_running_loop().create_task(self.heartbeat())
        for request_id in self.scheduler.expired(now):
            self.take_out(request_id)
            waiter = self.unqueue(request_id)
            waiter.granted.set_result(GatewayError(
                503, f"no backend slot for {waiter.context.model!r} within {self.scheduler.config.max_wait_s:g} s",
                headers={"Retry-After": str(self.scheduler.retry_after_s(waiter.context.model))}))
        self.wake(now)
        if next(self.ticks) % SNAPSHOT_EVERY_TICKS == 0:
            gateway, snapshot = f"{socket.gethostname()}:{ctx.options.listen_port}", self.scheduler.snapshot(now)
            for row in snapshot["backends"]:  # each gateway keeps breakers of its own: the admin app shows them all
                if view := self.registry.views.get(row["backend_id"]):
                    row["breaker"] = view.breaker.state
            self.writer.submit(lambda: write_snapshot(gateway, snapshot))

    def unqueue(self, request_id: str) -> Waiter:
        waiter = self.waiters.pop(request_id)
        self.queued_by_client[waiter.client_id].discard(request_id)
        if not self.queued_by_client[waiter.client_id]:
            del self.queued_by_client[waiter.client_id]
        series(QUEUED, waiter.context.model).dec()
        return waiter

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind != "inference":
            return
        if not self.registry.serves(context.model):
            reply_error(flow, context.dialect, GatewayError(
                404, f"unknown model {context.model!r} (available: {', '.join(sorted(self.registry.known_models())) or 'none'})",
                code="model_not_found"))
            return
        canonical, principal = context.canonical, context.principal
        if refusal := capability_refusal(canonical, context.model, self.registry.capabilities(context.model)):
            reply_error(flow, context.dialect, GatewayError(400, refusal, code="model_capability"))
            return
        if client_left(flow):  # it left while an earlier step awaited (key check, image fetch, policy)
            drop(flow)
            return
        cost = expected_cost(canonical.estimated_prompt_tokens, canonical.max_tokens, generates=canonical.generates)
        now = context.queued_at = time.monotonic()
        try:
            self.scheduler.submit(
                context.request_id, principal.user_id, principal.weight, context.model, cost, now,
                max_waiting=limit_for(principal.role, principal.max_queued_override, self.waiting_limits),
                # With the shared queue the cap is counted there, over every gateway.
                max_running=0 if self.shared else limit_for(
                    principal.role, principal.max_concurrent_override, self.running_limits))
        except QueueFull as refused:
            REFUSALS.labels("too_many_waiting", principal.role).inc()
            reply_error(flow, context.dialect, GatewayError(
                429, str(refused), code="too_many_waiting", headers={"Retry-After": str(refused.retry_after_s)}))
            return
        except NoBackend as refused:
            reply_error(flow, context.dialect, GatewayError(503, str(refused),
                                                            headers={"Retry-After": str(refused.retry_after_s)}))
            return
        cap = limit_for(principal.role, principal.max_concurrent_override, self.running_limits)
        waiter = Waiter(context, flow.client_conn.id, cost, cap)
        self.waiters[context.request_id] = waiter
        self.queued_by_client.setdefault(waiter.client_id, set()).add(context.request_id)
        series(QUEUED, context.model).inc()
        if self.shared:
            self.spawn(self.enqueue(context.request_id, waiter))
        else:
            self.wake(now)
        try:
            outcome = await waiter.granted
        except asyncio.CancelledError:  # the client left while queued: never send it upstream
            drop(flow)
            return
        if isinstance(outcome, GatewayError):
            reply_error(flow, context.dialect, outcome)
            return
        context.backend, context.granted_at = outcome, time.monotonic()
        QUEUE_WAIT.observe(context.granted_at - context.received_at)
        if client_left(flow):  # it left between its grant and now: the error hooks give the slot back
            drop(flow)

    def refuse_waiting(self, error: GatewayError) -> int:
        """Answer every queued request with `error` (the gateway is shutting down); how many there were."""
        now = time.monotonic()
        waiting = list(self.waiters)
        for request_id in waiting:
            self.scheduler.cancel(request_id, now)
            self.take_out(request_id)
            self.unqueue(request_id).granted.set_result(error)
        return len(waiting)

    def wake(self, now: float) -> None:
        """Move failed-over requests where a slot came free, then resume every request granted one now.
        With the shared queue, grants come from Redis instead (`take`)."""
        if self.shared:
            return
        for request_id, (exclude, moved) in list(self.transfers.items()):
            if grant := self.scheduler.transfer(request_id, exclude, now):
                del self.transfers[request_id]
                if not moved.done():  # its caller may have left in this very turn of the loop
                    moved.set_result(grant)
        for grant in self.scheduler.dispatch(now):
            waiter = self.unqueue(grant.request_id)
            backend = self.registry.views.get(grant.backend_id)
            if backend is None:  # removed since the scheduler last heard: its grant must not hang the request
                self.scheduler.release(grant.request_id, 0, now)
                waiter.granted.set_result(BACKEND_GONE)
                continue
            self.occupy(backend)
            waiter.granted.set_result(backend)

    @staticmethod
    def occupy(backend: BackendView) -> None:
        backend.in_flight += 1
        backend.breaker.dispatched()
        series(IN_FLIGHT, backend.name).inc()

    @staticmethod
    def vacate(backend: BackendView) -> None:
        backend.in_flight -= 1
        series(IN_FLIGHT, backend.name).dec()

    async def transfer(self, context: RequestContext, exclude: frozenset[int]) -> BackendView | None:
        """Move a request whose backend failed before answering to another backend that serves its model.

        It keeps its slot while it waits for one (ahead of the queue: it has waited its turn already),
        for at most scheduler_max_wait_s; then its slot is given back and the request is over.
        """
        if self.shared:
            return await self.shared_transfer(context, exclude)
        grant = self.scheduler.transfer(context.request_id, exclude, time.monotonic())
        if grant is None and not any(view.id not in exclude for view in self.registry.serving(context.model)):
            self.release(context)  # no other backend serves the model: the failure is the answer
            return None
        if grant is None:
            moved = asyncio.get_running_loop().create_future()
            self.transfers[context.request_id] = (exclude, moved)
            try:
                grant = await asyncio.wait_for(moved, self.scheduler.config.max_wait_s)
            except TimeoutError:
                self.transfers.pop(context.request_id, None)
                self.release(context)
                return None
            except asyncio.CancelledError:  # the caller left while it waited
                self.transfers.pop(context.request_id, None)
                self.release(context)
                raise
        backend = self.registry.views.get(grant.backend_id)
        if backend is None:  # removed since the scheduler last heard
            self.release(context)
            return None
        self.vacate(context.backend)
        context.backend = backend
        self.occupy(backend)
        return backend

    def release(self, context: RequestContext) -> None:
        """Give a granted request's slot back, charging what it really used; once, however it ended."""
        if context.backend is None or context.finished_at is not None:
            return
        now = context.finished_at = time.monotonic()
        usage = context.translator.usage if context.translator else None
        slot = self.scheduler.slot_of(context.request_id)
        self.scheduler.release(context.request_id, usage.total_tokens if usage else None, now)
        self.vacate(context.backend)
        # Reconnecting, this gateway renews its running requests' leases in Redis: one that ends must give its
        # lease back there too, or the slot stays taken for the others until the lease expires.
        if slot is not None and (self.shared or self.reconnected_at is not None):
            correction = (usage.total_tokens - slot.cost) / context.principal.weight if usage else 0.0
            self.spawn(self.shared_release(slot.request_id, slot.user_id, slot.model, correction, slot.backend_id))
        self.wake(now)

    def response(self, flow: http.HTTPFlow) -> None:
        if context := context_of(flow):
            self.release(context)

    def error(self, flow: http.HTTPFlow) -> None:
        if context := context_of(flow):
            self.release(context)

    def client_disconnected(self, client) -> None:
        now = time.monotonic()
        for request_id in list(self.queued_by_client.get(client.id, ())):
            self.scheduler.cancel(request_id, now)
            self.take_out(request_id)
            self.unqueue(request_id).granted.cancel()
            log.info("request %s: client left while queued", request_id)
        self.wake(now)

    # ---- the shared queue (REDIS_URL) ----------------------------------------------------------------

    def spawn(self, work: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def redis_deadline(self):
        return asyncio.timeout(2 * ctx.options.redis_timeout_ms / 1000)

    def shared_backends(self, model: str | None = None, exclude: frozenset[int] = frozenset()) -> list[Backend]:
        """Backends this gateway sees accepting work (serving `model`, if given), the preferred first."""
        states = [state for view in self.registry.views.values()
                  if (state := backend_state(view)).accepts_work and state.backend_id not in exclude
                  and (model is None or model in state.models)]
        if model is not None:
            in_flight = {view.id: view.in_flight for view in self.registry.views.values()}
            states.sort(key=lambda s: preference(s, in_flight[s.backend_id], model in s.resident,
                                                 s.models_held or len(s.resident)))
        return [Backend(s.backend_id, s.max_concurrent, s.models) for s in states]

    def shared_backend(self, backend_id: int) -> Backend:
        """The backend a released slot belongs to, to refill it (none to refill if it stopped accepting work)."""
        view = self.registry.views.get(backend_id)
        state = backend_state(view) if view is not None else None
        if state is None or not state.accepts_work:
            return Backend(backend_id, 0, frozenset())
        return Backend(backend_id, state.max_concurrent, state.models)

    def shared_failed(self, what: str, exc: BaseException) -> None:
        """Redis failed: decide alone, on this gateway's share of each backend, until it answers again."""
        if self.answered_since_failure:  # what ran when Redis went, not what this gateway grants alone since
            self.running_when_failed = Counter(slot.backend_id for slot in self.scheduler.slots())
            self.answered_since_failure = False
        was_shared, self.shared, self.reconnected_at = self.shared, False, None
        self.queue.epoch += 1  # what it registered until now is stale: a grant of it must not count
        self.entries.clear()
        self.backends_changed()
        if was_shared:
            shares = ", ".join(f"{view.name} {self.share_of(backend_state(view))} of {view.max_concurrent}"
                               for view in self.registry.views.values())
            log.warning("Redis failed during %s (%s: %s): this gateway grants alone until Redis answers, on its "
                        "share of each backend (%s; running when Redis failed: %d, %d gateways alive, slots held "
                        "as Redis last said: %s)", what, type(exc).__name__, exc, shares,
                        sum(self.running_when_failed.values()), len(set(self.gateways) | {self.queue.gateway_id}),
                        self.held)

    async def heartbeat(self) -> None:
        """Every tick: say this gateway lives, pick up grants, renew leases; after an outage, rejoin."""
        now, given = time.monotonic(), self.given.copy()
        try:
            async with self.redis_deadline():
                if not self.shared:  # before its beat, so that no grant a script makes misses these slots
                    await self.reconnect()
                beat = await self.queue.tick(self.shared_backends())
                self.gateways, self.held, self.given_when_told = beat.gateways, beat.held, given
                self.answered_since_failure = True
                if self.shared and not beat.known and self.registered:
                    log.warning("Redis no longer knows this gateway (restarted?): registering its running and "
                                "waiting requests again")
                    await self.rejoin()
                elif not self.shared and self.may_rejoin(beat):
                    await self.rejoin()
                elif self.shared and now - self.renewed_at >= ctx.options.policy_lease_ttl_s / 3:
                    await self.renew()
        except shared_failures() as exc:
            self.shared_failed("heartbeat", exc)
            return
        self.registered = True
        self.take(beat.grants)

    async def reconnect(self) -> None:
        """Deciding alone: re-assert the running requests' slots in Redis. The first time Redis answers, grant
        alone no more from then on, and re-assert the slots granted while that first answer was on its way."""
        answered_at = await self.renew()
        if self.reconnected_at is None:
            self.reconnected_at, self.awaited = answered_at, set(self.gateways) - {self.queue.gateway_id}
            self.backends_changed()
            await self.renew()

    def may_rejoin(self, beat: Heartbeat) -> bool:
        """Grant from the shared table again once every gateway alive before the outage has beaten since this
        one reconnected (it renewed its running requests' slots before that beat and grants nothing alone
        after it, so the table holds every slot in use), or is missing from Redis after RECONNECT_GRACE_S
        (dead: a Redis that restarted empty forgot it), or its heartbeat has surely expired."""
        waited_ms = beat.now_ms - self.reconnected_at
        return waited_ms >= self.queue.ttl_ms or all(
            beat.gateways[gateway] >= self.reconnected_at if gateway in beat.gateways
            else waited_ms >= RECONNECT_GRACE_S * 1000 for gateway in self.awaited)

    async def renew(self) -> int:
        """Re-assert the slots of this gateway's running requests; Redis's clock (ms) when it did."""
        running = self.scheduler.slots()
        missing, now_ms = await self.queue.renew([(s.request_id, s.backend_id, s.user_id) for s in running])
        self.renewed_at = time.monotonic()
        if missing and self.shared:
            log.warning("%d slot leases of running requests had expired in Redis (a stall longer than "
                        "policy_lease_ttl_s, or Redis lost them); asserted again", missing)
        self.release_ended(running)
        return now_ms

    def release_ended(self, renewed: list[Slot]) -> None:
        """A request that ended while its lease was being renewed may have had it put back after its release
        (or before this gateway shared again, when it released nothing there): give those leases back, or
        their slots stay taken for every gateway until they expire."""
        for slot in renewed:
            if self.scheduler.slot_of(slot.request_id) is None:
                self.spawn(self.shared_release(slot.request_id, slot.user_id, slot.model, 0.0, slot.backend_id))

    async def rejoin(self) -> None:
        """Register this gateway afresh: a new epoch, its running requests' slots, then its waiting requests
        in the order they came; from then on grants come from the shared queue."""
        self.queue.epoch += 1
        await self.renew()  # first, as in `heartbeat`
        beat = await self.queue.tick(self.shared_backends())
        self.shared, self.reconnected_at = True, None
        self.backends_changed()
        log.info("shared queue: %d gateways alive; %d running and %d waiting requests of this one registered",
                 len(beat.gateways), len(self.scheduler.slots()), len(self.waiters))
        for request_id, waiter in list(self.waiters.items()):
            if request_id in self.waiters:
                await self.enqueue(request_id, waiter)
        self.take(beat.grants)

    async def enqueue(self, request_id: str, waiter: Waiter) -> None:
        if request_id not in self.waiters or not self.shared:  # gone already, or Redis failed meanwhile
            return
        context = waiter.context
        entry = Entry(self.queue.entry(request_id, waiter.cost, context.principal.weight, waiter.cap),
                      context.principal.user_id, context.model)
        self.entries[request_id] = entry
        try:
            async with self.redis_deadline():
                grants = await self.queue.enqueue(entry.text, entry.user_id, entry.model,
                                                  self.shared_backends(entry.model))
        except shared_failures() as exc:
            self.shared_failed("enqueue", exc)
            return
        self.take(grants)

    def take_out(self, request_id: str) -> None:
        """A waiting request leaves this gateway's queue: take it out of the shared one too."""
        if self.shared and request_id in self.entries:
            self.spawn(self.shared_cancel(request_id))

    async def shared_cancel(self, request_id: str) -> None:
        entry = self.entries[request_id]
        try:
            async with self.redis_deadline():
                removed = await self.queue.cancel(entry.text, entry.user_id, entry.model)
        except shared_failures() as exc:
            self.shared_failed("cancel", exc)
            return
        if removed:  # otherwise it was just granted: the grant gives its slot back when it comes (`take`)
            self.entries.pop(request_id, None)

    async def shared_release(self, request_id: str, user_id: int, model: str, correction: float,
                             backend_id: int) -> None:
        try:
            async with self.redis_deadline():
                released = await self.queue.release(request_id, user_id, model, correction,
                                                    self.shared_backend(backend_id))
        except shared_failures() as exc:
            self.shared_failed("release", exc)  # the lease expires on its own
            return
        self.given[backend_id] += released.given
        self.held[backend_id], self.given_when_told[backend_id] = released.held, self.given[backend_id]
        self.take(released.grants)

    def take(self, grants: list[Grant]) -> None:
        """Resume this gateway's requests the shared queue granted; a grant may come twice (message and
        heartbeat), or for a request no longer waiting here, whose slot goes straight back."""
        now = time.monotonic()
        for request_id, backend_id in grants:
            if slot := self.scheduler.slot_of(request_id):  # taken already; a second lease goes back
                if slot.backend_id != backend_id:
                    self.spawn(self.shared_release(request_id, slot.user_id, slot.model, 0.0, backend_id))
                continue
            entry = self.entries.pop(request_id, None)
            if entry is None:  # a late copy of a grant it took and has finished with, or ...
                if waiter := self.waiters.get(request_id):  # ... registered before Redis failed: the slot goes back
                    self.spawn(self.shared_release(request_id, waiter.context.principal.user_id, waiter.context.model,
                                                   0.0, backend_id))
                continue
            backend = self.registry.views.get(backend_id)
            if request_id in self.waiters and backend is not None and \
                    self.scheduler.grant_chosen(request_id, backend_id, now):
                waiter = self.unqueue(request_id)
                self.occupy(backend)
                waiter.granted.set_result(backend)
                continue
            self.spawn(self.shared_release(request_id, entry.user_id, entry.model, 0.0, backend_id))
            if request_id in self.waiters:  # granted a backend this gateway does not know yet: queue again
                self.spawn(self.enqueue(request_id, self.waiters[request_id]))

    async def listen_forever(self) -> None:
        """Grants made for this gateway's requests by other gateways' scripts, as they happen."""
        import redis.asyncio as aioredis  # a gateway without REDIS_URL never imports redis-py (6 MB)

        while True:
            client = aioredis.Redis.from_url(self.redis_url)  # no read timeout: it waits for messages
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.queue.grants_channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and self.shared:
                        request_id, backend_id = message["data"].decode().split()
                        self.take([Grant(request_id, int(backend_id))])
            except shared_failures():
                await asyncio.sleep(1)  # the heartbeat notices and says so; grants meanwhile wait in Redis
            finally:
                await pubsub.aclose()
                await client.aclose()

    async def shared_transfer(self, context: RequestContext, exclude: frozenset[int]) -> BackendView | None:
        """Failover with the shared slot table: a free slot on another backend, ahead of the queue, tried at
        every tick for at most scheduler_max_wait_s; the request keeps its slot meanwhile."""
        deadline = time.monotonic() + self.scheduler.config.max_wait_s
        try:
            while True:
                others = self.shared_backends(context.model, exclude | {context.backend.id})
                if not others and not any(view.id not in exclude for view in self.registry.serving(context.model)):
                    break
                try:
                    async with self.redis_deadline():
                        moved = await self.queue.move(context.request_id, context.backend.id, others)
                except shared_failures() as exc:
                    self.shared_failed("failover", exc)
                    moved = None
                backend = self.registry.views.get(moved) if moved is not None else None
                if backend is not None and self.scheduler.move(context.request_id, moved, time.monotonic()):
                    self.vacate(context.backend)
                    context.backend = backend
                    self.occupy(backend)
                    return backend
                if time.monotonic() >= deadline or not self.shared:
                    break
                await asyncio.sleep(TICK_S)
        except asyncio.CancelledError:  # the caller left while it waited
            self.release(context)
            raise
        self.release(context)
        return None
