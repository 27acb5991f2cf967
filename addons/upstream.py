"""Upstream: send a granted request to its backend, in the engine's dialect, failing over before the first byte.

mitmproxy answers a failed upstream connection with its own HTML 502 and cannot retry, so the
gateway talks to the backends itself (`addons/splice.py`: raw HTTP/1.1 per attempt, on a connection
kept from an earlier whole answer where there is one, `addons/backend_pool.py`) and keeps the choice of backend open until the response headers arrive: an engine fault
(connection refused or reset, a timeout before the headers, 502, 503 or 504) moves the request to
another backend that serves the model (bounded attempts, none after the last) and counts toward the
backend's breaker. What the caller's request caused counts against no backend and is not replayed: a
caller who can make one engine fail would otherwise make every engine fail in turn, and open every
breaker. A 500 can be either, so it gets one more try elsewhere and is blamed on its backend only if
another one then answers.

- Each attempt is built for its backend's engine: an Anthropic Messages request goes as it came to an
  engine that serves the Messages API itself (`native_messages_api`), translated to any other.
- A whole (non-streamed) answer is fetched in the request hook and becomes the flow's response. A
  caller that leaves meanwhile cancels the fetch: the engine aborts the generation and the slot is free.
- A streamed answer must reach mitmproxy as a stream, which only its own upstream connection gives;
  so the flow is pointed at a relay in this process (127.0.0.1, a free port), which opens the
  backend stream with the same failover and splices its bytes on. A backend that breaks off mid-stream
  ends the relayed stream early, and the response translator closes it with a clean error event in
  the caller's dialect instead of a truncated stream that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import NamedTuple

from mitmproxy import ctx, exceptions, http

from addons.backend_pool import BackendPool
from addons.context import RequestContext, client_left, context_of, drop
from addons.gate import Gate
from addons.metrics import FAILOVERS, REQUESTS, series
from addons.registry import BackendRegistry, BackendView
from addons.replies import point_at_backend, reply_error
from addons.splice import BackendStream, RelayConnection, Splice
from translators.errors import GatewayError
from translators.pipeline import build_backend_request, response_translator, serves_natively

log = logging.getLogger(__name__)

RELAY_HEADER = "X-MindRouter-Relay"
# Answers that say the engine (or a proxy in front of it) could not take the request, rather than
# anything about the request itself: the only ones failed over and counted against the backend.
ENGINE_FAULT_STATUSES = frozenset({502, 503, 504})
# Whose fault a failed attempt was: the engine's (counted toward its breaker), the request's, or unclear (a 500).
ENGINE, REQUEST, UNCLEAR = "engine", "request", "unclear"

Answer = tuple[int, bytes, str | None]  # status, body, media type


class Failure(NamedTuple):
    reason: str
    answer: Answer
    blame: str


class Upstream:
    def __init__(self, registry: BackendRegistry, gate: Gate) -> None:
        self.registry = registry
        self.gate = gate
        self.pool = BackendPool()
        self.relayed: dict[str, RequestContext] = {}  # streamed requests on their way to the relay
        self.relay_connections: set[RelayConnection] = set()
        self.fetching: dict[str, set[asyncio.Future]] = {}  # client connection id → whole answers being fetched
        self.relay_server: asyncio.Server | None = None
        self.relay_url = ""

    def load(self, loader):
        loader.add_option(
            "failover_attempts", int, 2,
            "Other backends a request may move to when its backend fails before answering (0: none).",
        )
        loader.add_option(
            "native_messages_api", bool, True,
            "Send Anthropic Messages requests as they came to engines that serve the Messages API themselves "
            "(vLLM; Ollama from 0.14); off: translate them to every engine's chat, as for engines that do not.",
        )
        loader.add_option(
            "upstream_connect_timeout_s", int, 5, "Longest the gateway waits to connect to a backend.",
        )
        loader.add_option(
            "upstream_header_timeout_s", int, 600,
            "Longest a backend may take to start answering (a whole answer counts: generation time included).",
        )
        loader.add_option(
            "upstream_stream_idle_s", int, 300,
            "Longest a streamed answer may go without a byte from its backend (a model load included) before "
            "the gateway ends it with an error event, frees its slot and counts a backend failure.",
        )
        loader.add_option(
            "upstream_keepalive_s", int, 4,
            "Longest a connection to a backend stays open between whole answers, for the next request to take "
            "(0: a connection per request). Below vLLM's own 5 s, so the gateway closes it first.",
        )

    def configure(self, updated):
        if "upstream_keepalive_s" in updated:
            if ctx.options.upstream_keepalive_s < 0:
                raise exceptions.OptionsError("upstream_keepalive_s must be 0 or more")
            self.pool.idle_s = ctx.options.upstream_keepalive_s

    async def running(self):
        self.relay_server = await asyncio.get_running_loop().create_server(
            lambda: RelayConnection(self.relay, RELAY_HEADER.encode(), self.relay_connections), "127.0.0.1", 0)
        self.relay_url = "http://127.0.0.1:%d" % self.relay_server.sockets[0].getsockname()[1]

    async def done(self):
        self.pool.close()
        if self.relay_server:
            self.relay_server.close()
            for relay_connection in list(self.relay_connections):
                relay_connection.transport.abort()

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.backend is None:
            return
        if client_left(flow):  # nobody to answer: the error hooks give the slot back
            drop(flow)
            return
        try:  # the caller's request may ask what no engine can do (GatewayError 422): say so before trying
            self.backend_request(context, context.backend)
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        if context.stream:
            self.relayed[context.request_id] = context
            point_at_backend(flow, self.relay_url)
            flow.request.path = "/relay"
            # The relay needs only the request's id: it builds each attempt from the canonical request,
            # and none of the caller's headers (of any size) has anything to do there.
            flow.request.headers = http.Headers([(b"Host", self.relay_url.removeprefix("http://").encode()),
                                                 (RELAY_HEADER.encode(), context.request_id.encode())])
            flow.request.content = b""
            return
        fetch = asyncio.ensure_future(self.fetch_whole(context))
        fetches = self.fetching.setdefault(flow.client_conn.id, set())
        fetches.add(fetch)
        try:
            status, body, media_type = await fetch
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the gateway is stopping
            log.info("request %s: the client left before its answer; backend request cancelled", context.request_id)
            drop(flow)  # the error hooks give the slot back and record the request
            return
        finally:
            fetches.discard(fetch)
            if not fetches:
                self.fetching.pop(flow.client_conn.id, None)
        context.first_byte_at = time.monotonic()
        flow.response = http.Response.make(status, body, {"Content-Type": media_type or "application/json"})

    async def fetch_whole(self, context: RequestContext) -> Answer:
        """A whole answer: (status, body, media type), the last failure's if no backend answered."""
        answer = await self.open(context)
        if isinstance(answer, tuple):
            return answer
        try:
            async with asyncio.timeout(ctx.options.upstream_stream_idle_s):
                return answer.head.status, await answer.read_body(), answer.head.media_type
        except (OSError, TimeoutError) as exc:
            self.registry.failed(context.backend, repr(exc))
            return 502, engine_error(f"backend {context.backend.name} broke off: {exc!r}"), None
        finally:
            self.pool.release(answer)

    def client_disconnected(self, client) -> None:
        """A caller that leaves while its whole answer is being generated stops the generation: closing
        the backend connection makes vLLM and Ollama abort it, and the slot comes back at once."""
        for fetch in self.fetching.pop(client.id, ()):
            fetch.cancel()

    async def open(self, context: RequestContext) -> BackendStream | Answer:
        """The backend's answer with its head in (body not yet read), after at most `failover_attempts`
        moves; or (status, body, media type) of the last failure.

        Only engine faults count toward a backend's breaker. A 500 may be the engine's fault or the
        request's: it is tried once more elsewhere, and counted against the first backend only if
        another one then answers; a second 500 ends the request without blaming either."""
        tried: set[int] = set()
        answered_500: list[BackendView] = []
        failure: Answer = NO_BACKEND_ANSWERED
        attempts = 1 + ctx.options.failover_attempts
        for attempt in range(1, attempts + 1):
            backend = context.backend
            outcome = await self.attempt(context, backend)
            if isinstance(outcome, BackendStream):
                self.registry.succeeded(backend, context.model)
                for failed in answered_500:
                    self.registry.failed(failed, "answered 500 to a request another backend served")
                return outcome
            log.warning("request %s: %s %s", context.request_id, backend.name, outcome.reason)
            failure = outcome.answer
            if outcome.blame == ENGINE:
                self.registry.failed(backend, outcome.reason)
            elif outcome.blame == UNCLEAR:
                if answered_500:  # two engines fail the same request: the request is the cause
                    break
                answered_500.append(backend)
            tried.add(backend.id)
            if attempt == attempts or await self.gate.transfer(context, frozenset(tried)) is None:
                break
            FAILOVERS.labels(context.model).inc()
            log.info("request %s: failing over to %s", context.request_id, context.backend.name)
        context.error = failure[1].decode("utf-8", "replace")[:500]
        return failure

    def backend_request(self, context: RequestContext, backend: BackendView) -> tuple[str, bytes]:
        """The path and body `backend` is sent, built once per backend (the request hook's check is the first
        attempt's): the caller's own API where the engine serves it, else translated (one failover may go
        from one to the other)."""
        if context.prepared is None or context.prepared[0] != backend.id:
            if backend.engine == "vllm":  # vLLM knows one spelling; Ollama answers the name as the caller typed it
                context.canonical.model = backend.served_name(context.model) or context.canonical.model
            native = ctx.options.native_messages_api and serves_natively(context.canonical, backend.engine,
                                                                          backend.native_endpoints)
            built = build_backend_request(context.canonical, backend.engine, context.request_id, native)
            context.prepared = (backend.id, native, built)
        return context.prepared[2]

    async def attempt(self, context: RequestContext, backend: BackendView) -> BackendStream | Failure:
        """One try at `backend`: its answer with the head in, or why not and whose fault that is."""
        try:
            path, payload = self.backend_request(context, backend)
        except GatewayError as error:  # this engine cannot take what the caller asked; another may
            return Failure(error.message, (error.status, engine_error(error.message), None), REQUEST)
        context.translator = response_translator(context.canonical, backend.engine, context.request_id,
                                                 int(time.time()), native=context.prepared[1])
        context.sent_at = context.sent_at or time.monotonic()
        answer, answered = None, False
        try:
            async with asyncio.timeout(ctx.options.upstream_header_timeout_s):
                answer = await self.pool.exchange(backend.url, path, payload, ctx.options.upstream_connect_timeout_s,
                                                  whole=not context.stream)
                head = answer.head
                if head.status not in ENGINE_FAULT_STATUSES and head.status != 500:
                    answered = True
                    return answer
                body = await answer.read_body()
        except (OSError, TimeoutError) as exc:
            reason = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            return Failure(reason, (502, engine_error(f"backend {backend.name} failed: {reason}"), None), ENGINE)
        finally:
            if answer is not None and not answered:  # kept if its error answer was read; else the engine stops
                self.pool.release(answer)
        blame = UNCLEAR if head.status == 500 else ENGINE
        return Failure(f"answered {head.status}", (head.status, body, head.media_type), blame)

    async def relay(self, request_id: str, connection: RelayConnection) -> None:
        """A flow the request hook sent to the relay: open its backend stream and splice it on."""
        context = self.relayed.pop(request_id, None)
        if context is None:
            connection.answer(404, b'{"error": "unknown relayed request"}', None)
            return
        try:
            answer = await self.open(context)
            if isinstance(answer, tuple):
                connection.answer(*answer)
                return
            connection.splice = context.splice = Splice(answer, connection.transport, ctx.options.upstream_stream_idle_s,
                                                        lambda reason: self.broke_off(context, reason))
            connection.splice.start()
        except Exception:  # a fault of the gateway's own: the caller gets an error in its dialect, not a hang
            log.exception("request %s: the stream relay failed", context.request_id)
            context.error = "the gateway's stream relay failed"
            if connection.splice is None:
                connection.answer(500, engine_error(context.error), None)
            else:
                connection.transport.abort()

    def broke_off(self, context: RequestContext, reason: str) -> None:
        """The backend ended mid-stream: the caller's stream ends early, and the translator says so."""
        context.error = f"backend {context.backend.name} broke off mid-stream: {reason}"
        self.registry.failed(context.backend, context.error)

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind == "admin":
            return
        self.count(context, str(flow.response.status_code))

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind == "admin":
            return
        self.relayed.pop(context.request_id, None)
        if context.backend is not None:
            log.warning("request %s to %s failed: %s", context.request_id, context.backend.name, flow.error)
        self.count(context, "error")

    def count(self, context: RequestContext, status: str) -> None:
        """Metrics are labelled with models the backends serve, never with whatever string a caller sent:
        series stay bounded however many made-up names reach the unauthenticated /metrics."""
        if self.registry.serves(context.model):
            context.model_label = context.model
        backend = context.backend.name if context.backend else ""
        series(REQUESTS, context.route.endpoint, context.model_label, backend, status).inc()


def engine_error(message: str) -> bytes:
    """An error body every engine error translator reads."""
    return json.dumps({"error": message}).encode()


NO_BACKEND_ANSWERED: Answer = (502, engine_error("no backend answered"), None)
