"""Drain: on shutdown (SIGTERM), every request the gateway took is answered before anything stops.

mitmproxy calls the addons' `done` hooks in order, while the event loop and the listeners still
run, and ends every connection once they return. First in the list, this `done` runs before any
other addon stops. At once `/readyz` answers 503, so a balancer takes the gateway out of its
rotation; for `shutdown_drain_s` more it serves what still arrives (the balancer's next health
check may be that far off). From then on a new request gets 503 with Retry-After in its dialect,
queued ones get the same from the gate, and running ones have `shutdown_grace_s` to finish. Only
then do the later addons stop (the stream relay, the policy's Redis), and the
store writer, last of all, flushes the audit rows and usage of everything that ran.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions, http

from addons.gate import Gate
from addons.replies import reply_error, reply_json
from addons.routing import HEALTH, route_for
from translators.errors import GatewayError

log = logging.getLogger(__name__)

SHUTTING_DOWN = GatewayError(503, "this gateway is shutting down; retry (another gateway will answer)",
                             headers={"Retry-After": "1"})


class Drain:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.draining = False  # /readyz says 503
        self.stopping = False  # and every new request too
        self.open_flows: set[str] = set()  # ids of the flows taken and not yet ended
        self.all_ended: asyncio.Event | None = None

    def load(self, loader):
        loader.add_option(
            "shutdown_grace_s", int, 30,
            "On shutdown, seconds requests already running get to finish before the gateway stops anyway.",
        )
        loader.add_option(
            "shutdown_drain_s", int, 0,
            "On shutdown, seconds /readyz answers 503 while new requests are still served, before they are "
            "refused: at least a load balancer's health-check interval, so it never sends one to a gateway "
            "that refuses it.",
        )

    def configure(self, updated):
        for name in ("shutdown_grace_s", "shutdown_drain_s"):
            if name in updated and getattr(ctx.options, name) < 0:
                raise exceptions.OptionsError(f"{name}: {getattr(ctx.options, name)!r} is not a whole number ≥ 0")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.stream:  # a body held by BodyLimit: its answer is a request of its own, drained as any other
            return
        if self.draining:
            route = route_for(flow.request.method, flow.request.path.split("?", 1)[0])
            if route.endpoint == "/readyz":  # a balancer sends no more here
                reply_json(flow, 503, {"status": "shutting down"})
                return
            if self.stopping:
                if route.kind != HEALTH:
                    reply_error(flow, route.dialect, SHUTTING_DOWN)
                return
        self.open_flows.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self.ended(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.ended(flow)

    def ended(self, flow: http.HTTPFlow) -> None:
        self.open_flows.discard(flow.id)
        if self.all_ended is not None and not self.open_flows:
            self.all_ended.set()

    async def done(self):
        self.draining = True
        if ctx.options.shutdown_drain_s:
            log.info("shutting down: /readyz answers 503; requests still served for %d s", ctx.options.shutdown_drain_s)
            await asyncio.sleep(ctx.options.shutdown_drain_s)
        self.stopping = True
        self.all_ended = asyncio.Event()
        refused = self.gate.refuse_waiting(SHUTTING_DOWN)
        log.info("shutting down: %d queued requests refused, %d running get up to %d s to finish",
                 refused, len(self.open_flows) - refused, ctx.options.shutdown_grace_s)
        if self.open_flows:
            try:
                await asyncio.wait_for(self.all_ended.wait(), ctx.options.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutting down with %d requests unfinished after %d s",
                            len(self.open_flows), ctx.options.shutdown_grace_s)
