"""Gate: hold each inference request until a backend that serves its model has a free slot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from mitmproxy import ctx, http

from addons.context import RequestContext, context_of
from addons.metrics import IN_FLIGHT, QUEUE_WAIT, QUEUED
from addons.registry import BackendRegistry, BackendView
from addons.replies import reply_error
from translators.errors import GatewayError

log = logging.getLogger(__name__)


@dataclass
class Waiter:
    context: RequestContext
    client_id: str
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Gate:
    """Admission: one slot per in-flight request on a backend, never more than its max_concurrent."""

    def __init__(self, registry: BackendRegistry) -> None:
        self.registry = registry
        self.waiting: dict[str, deque[Waiter]] = defaultdict(deque)

    def load(self, loader):
        loader.add_option(
            "gate_max_wait_s", float, 300.0,
            "Longest a request waits for a backend slot before it gets 503 with Retry-After.",
        )

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind != "inference":
            return
        if not any(view.served_name(context.model) for view in self.registry.views.values() if view.enabled):
            available = sorted(self.registry.known_models())
            reply_error(flow, context.dialect, GatewayError(
                404, f"unknown model {context.model!r} (available: {', '.join(available) or 'none'})",
                code="model_not_found"))
            return
        waiter = Waiter(context, flow.client_conn.id)
        self.waiting[context.model].append(waiter)
        QUEUED.labels(context.model).inc()
        self.dispatch()
        await asyncio.wait({waiter.granted}, timeout=ctx.options.gate_max_wait_s)
        if waiter.granted.cancelled():  # the client left while queued: never send it upstream
            flow.kill()
            return
        if not waiter.granted.done():
            self.withdraw(waiter)
            reply_error(flow, context.dialect, GatewayError(
                503, f"no backend slot for {context.model!r} within {ctx.options.gate_max_wait_s:.0f} s",
                headers={"Retry-After": "5"}))
            return
        context.backend, context.granted_at = waiter.granted.result(), time.monotonic()
        QUEUE_WAIT.observe(context.granted_at - context.received_at)

    def response(self, flow: http.HTTPFlow) -> None:
        if context := context_of(flow):
            self.release(context)

    def error(self, flow: http.HTTPFlow) -> None:
        if context := context_of(flow):
            self.release(context)

    def withdraw(self, waiter: Waiter) -> None:
        """Take a waiter that was never granted out of the queue."""
        queue = self.waiting[waiter.context.model]
        if waiter in queue:
            queue.remove(waiter)
            QUEUED.labels(waiter.context.model).dec()
            waiter.granted.cancel()

    def dispatch(self) -> None:
        """Grant every free slot to the oldest waiter for a model it serves (work-conserving)."""
        for model, queue in self.waiting.items():
            while queue:
                backend = self.free_backend(model)
                if backend is None:
                    break
                waiter = queue.popleft()
                QUEUED.labels(model).dec()
                backend.in_flight += 1
                IN_FLIGHT.labels(backend.name).inc()
                waiter.granted.set_result(backend)

    def free_backend(self, model: str) -> BackendView | None:
        candidates = [view for view in self.registry.serving(model) if view.in_flight < view.max_concurrent]
        if not candidates:
            return None
        return min(candidates, key=lambda v: (not v.models[v.served_name(model)].resident,
                                              v.in_flight / v.max_concurrent, -v.priority))

    def release_slot(self, backend: BackendView) -> None:
        backend.in_flight -= 1
        IN_FLIGHT.labels(backend.name).dec()
        self.dispatch()

    def release(self, context: RequestContext) -> None:
        """Called once per granted request when it ends, whichever way it ends."""
        if context.backend is not None and context.finished_at is None:
            context.finished_at = time.monotonic()
            self.release_slot(context.backend)

    def client_disconnected(self, client) -> None:
        for queue in self.waiting.values():
            for waiter in [w for w in queue if w.client_id == client.id]:
                log.info("request %s: client left while queued", waiter.context.request_id)
                self.withdraw(waiter)
