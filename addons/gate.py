"""Gate: hold each inference request until the fair-share scheduler grants it a backend slot.

The scheduler (scheduler/, pure) decides; this addon feeds it what the registry knows about the
backends, turns its grants into resumed flows, and gives every slot back exactly once: when the
answer has been delivered, when the flow errors, or when the client leaves while queued.

Per-user limits live here, in the fair queue, because they must never lock a user out of it: a user
at its cap on running requests (`max_concurrent_per_user`) waits in its queue while the others take
the free slots, and only a request beyond its bound on waiting ones (`max_queued_per_user`) is
refused, with a Retry-After of when one of its places likely frees (docs/scheduler.md, "Limits").
The cap is per gateway process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from itertools import count

from mitmproxy import ctx, exceptions, http

from addons.context import RequestContext, client_left, context_of
from addons.metrics import IN_FLIGHT, QUEUE_WAIT, QUEUED, REFUSALS
from addons.registry import BackendRegistry, BackendView, model_aliases
from addons.replies import reply_error
from addons.writer import StoreWriter
from scheduler import BackendState, NoBackend, QueueFull, Scheduler, SchedulerConfig, expected_cost
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


def write_snapshot(gateway: str, snapshot: dict) -> None:
    """Replace this gateway's row of the live queue table (runs on the writer thread)."""
    QueueSnapshot.insert(gateway=gateway, taken_at=utcnow(), data=json.dumps(snapshot)).on_conflict_replace().execute()


@dataclass
class Waiter:
    context: RequestContext
    client_id: str
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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
    def __init__(self, registry: BackendRegistry, writer: StoreWriter, fairness_window_s: float) -> None:
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
                burst_cap=ctx.options.scheduler_burst_cap,
                fairness_window_s=self.fairness_window_s,
                max_wait_s=ctx.options.scheduler_max_wait_s,
            )
        except ValueError as error:
            raise exceptions.OptionsError(str(error)) from None
        self.scheduler.reconfigure(config, time.monotonic())

    def running(self):
        self.ticker = asyncio.get_running_loop().create_task(self.tick_forever())

    def done(self):
        if self.ticker:
            self.ticker.cancel()

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def backends_changed(self) -> None:
        self.scheduler.update_backends(backend_state(view) for view in self.registry.views.values())
        self.wake(time.monotonic())

    def tick(self) -> None:
        now = time.monotonic()
        for request_id in self.scheduler.expired(now):
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
        QUEUED.labels(waiter.context.model).dec()
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
            flow.kill()
            return
        cost = expected_cost(canonical.estimated_prompt_tokens, canonical.max_tokens, generates=canonical.generates)
        now = context.queued_at = time.monotonic()
        try:
            self.scheduler.submit(
                context.request_id, principal.user_id, principal.weight, context.model, cost, now,
                max_waiting=limit_for(principal.role, principal.max_queued_override, self.waiting_limits),
                max_running=limit_for(principal.role, principal.max_concurrent_override, self.running_limits))
        except QueueFull as refused:
            REFUSALS.labels("too_many_waiting", principal.role).inc()
            reply_error(flow, context.dialect, GatewayError(
                429, str(refused), code="too_many_waiting", headers={"Retry-After": str(refused.retry_after_s)}))
            return
        except NoBackend as refused:
            reply_error(flow, context.dialect, GatewayError(503, str(refused),
                                                            headers={"Retry-After": str(refused.retry_after_s)}))
            return
        waiter = Waiter(context, flow.client_conn.id)
        self.waiters[context.request_id] = waiter
        self.queued_by_client.setdefault(waiter.client_id, set()).add(context.request_id)
        QUEUED.labels(context.model).inc()
        self.wake(now)
        try:
            outcome = await waiter.granted
        except asyncio.CancelledError:  # the client left while queued: never send it upstream
            flow.kill()
            return
        if isinstance(outcome, GatewayError):
            reply_error(flow, context.dialect, outcome)
            return
        context.backend, context.granted_at = outcome, time.monotonic()
        QUEUE_WAIT.observe(context.granted_at - context.received_at)
        if client_left(flow):  # it left between its grant and now: the error hooks give the slot back
            flow.kill()

    def refuse_waiting(self, error: GatewayError) -> int:
        """Answer every queued request with `error` (the gateway is shutting down); how many there were."""
        now = time.monotonic()
        waiting = list(self.waiters)
        for request_id in waiting:
            self.scheduler.cancel(request_id, now)
            self.unqueue(request_id).granted.set_result(error)
        return len(waiting)

    def wake(self, now: float) -> None:
        """Move failed-over requests where a slot came free, then resume every request granted one now."""
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
        IN_FLIGHT.labels(backend.name).inc()

    @staticmethod
    def vacate(backend: BackendView) -> None:
        backend.in_flight -= 1
        IN_FLIGHT.labels(backend.name).dec()

    async def transfer(self, context: RequestContext, exclude: frozenset[int]) -> BackendView | None:
        """Move a request whose backend failed before answering to another backend that serves its model.

        It keeps its slot while it waits for one (ahead of the queue: it has waited its turn already),
        for at most scheduler_max_wait_s; then its slot is given back and the request is over.
        """
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
        self.scheduler.release(context.request_id, usage.total_tokens if usage else None, now)
        self.vacate(context.backend)
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
            self.unqueue(request_id).granted.cancel()
            log.info("request %s: client left while queued", request_id)
        self.wake(now)
