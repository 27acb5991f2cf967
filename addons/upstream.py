"""Upstream: send a granted request to its backend, in the engine's dialect, failing over before the first byte.

mitmproxy answers a failed upstream connection with its own HTML 502 and cannot retry, so the
gateway talks to the backends itself (httpx) and keeps the choice of backend open until the
response headers arrive: connection refused, a timeout before the headers or a 5xx move the
request to another backend that serves the model (bounded attempts).

- A whole (non-streamed) answer is fetched in the request hook and becomes the flow's response. A
  caller that leaves meanwhile cancels the fetch: the engine aborts the generation and the slot is free.
- A streamed answer must reach mitmproxy as a stream, which only its own upstream connection gives;
  so the flow is pointed at a relay in this process (127.0.0.1, a free port), which opens the
  backend stream with the same failover and pipes it through. A backend that breaks off mid-stream
  ends the relayed stream early, and the response translator closes it with a clean error event in
  the caller's dialect instead of a truncated stream that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
from aiohttp import web
from mitmproxy import ctx, http

from addons.context import RequestContext, context_of
from addons.gate import Gate
from addons.metrics import FAILOVERS, REQUESTS
from addons.registry import BackendRegistry
from addons.replies import point_at_backend, reply_error
from translators.errors import GatewayError
from translators.pipeline import build_backend_request, response_translator

log = logging.getLogger(__name__)

RELAY_HEADER = "X-MindRouter-Relay"


class Upstream:
    def __init__(self, registry: BackendRegistry, gate: Gate) -> None:
        self.registry = registry
        self.gate = gate
        self.client: httpx.AsyncClient | None = None
        self.relayed: dict[str, RequestContext] = {}  # streamed requests on their way to the relay
        self.fetching: dict[str, set[asyncio.Future]] = {}  # client connection id → whole answers being fetched
        self.relay_runner: web.AppRunner | None = None
        self.relay_url = ""

    def load(self, loader):
        loader.add_option(
            "failover_attempts", int, 2,
            "Other backends a request may move to when its backend fails before answering (0: none).",
        )
        loader.add_option(
            "upstream_connect_timeout_s", int, 5, "Longest the gateway waits to connect to a backend.",
        )
        loader.add_option(
            "upstream_header_timeout_s", int, 600,
            "Longest a backend may take to start answering (a whole answer counts: generation time included).",
        )

    async def running(self):
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=ctx.options.upstream_connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            trust_env=False,
        )
        app = web.Application()
        app.router.add_post("/relay", self.relay)
        # A caller that leaves before the backend's headers closes mitmproxy's connection to the relay:
        # cancelling the handler then closes the backend request too, so the engine stops at once.
        self.relay_runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.relay_runner.setup()
        site = web.TCPSite(self.relay_runner, "127.0.0.1", 0)
        await site.start()
        self.relay_url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]

    async def done(self):
        if self.relay_runner:
            await self.relay_runner.cleanup()
        if self.client:
            await self.client.aclose()

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.backend is None:
            return
        try:  # the caller's request may ask what no engine can do (GatewayError 422): say so before trying
            build_backend_request(context.canonical, context.backend.engine, context.request_id)
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        if context.stream:
            self.relayed[context.request_id] = context
            point_at_backend(flow, self.relay_url)
            flow.request.path = "/relay"
            flow.request.headers[RELAY_HEADER] = context.request_id
            flow.request.content = b""  # the relay builds each attempt's body from the canonical request
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
            flow.kill()  # the error hooks give the slot back and record the request
            return
        finally:
            fetches.discard(fetch)
            if not fetches:
                self.fetching.pop(flow.client_conn.id, None)
        context.first_byte_at = time.monotonic()
        flow.response = http.Response.make(status, body, {"Content-Type": media_type or "application/json"})

    async def fetch_whole(self, context: RequestContext) -> tuple[int, bytes, str | None]:
        """A whole answer: (status, body, media type), the last failure's if no backend answered."""
        answer = await self.open(context)
        if not isinstance(answer, httpx.Response):
            return answer
        try:
            return answer.status_code, await answer.aread(), answer.headers.get("Content-Type")
        except httpx.HTTPError as exc:
            self.registry.failed(context.backend, repr(exc))
            return 502, engine_error(f"backend {context.backend.name} broke off: {exc!r}"), None
        finally:
            await answer.aclose()

    def client_disconnected(self, client) -> None:
        """A caller that leaves while its whole answer is being generated stops the generation: closing
        the backend connection makes vLLM and Ollama abort it, and the slot comes back at once."""
        for fetch in self.fetching.pop(client.id, ()):
            fetch.cancel()

    async def open(self, context: RequestContext) -> httpx.Response | tuple[int, bytes, str | None]:
        """The backend's response with its headers in (body not yet read), after at most
        `failover_attempts` moves; or (status, body, media type) of the last failure."""
        tried: set[int] = set()
        failure: tuple[int, bytes, str | None] = (502, engine_error("no backend answered"), None)
        for _ in range(1 + ctx.options.failover_attempts):
            backend, canonical = context.backend, context.canonical
            if backend.engine == "vllm":  # vLLM knows one spelling; Ollama answers the name as the caller typed it
                canonical.model = backend.served_name(context.model) or canonical.model
            try:
                path, payload = build_backend_request(canonical, backend.engine, context.request_id)
            except GatewayError as error:  # this engine cannot take it; another may
                reason, failure = error.message, (error.status, engine_error(error.message), None)
            else:
                context.translator = response_translator(canonical, backend.engine, context.request_id, int(time.time()))
                request = self.client.build_request(
                    "POST", backend.url + path, content=payload,
                    # The gateway reads and rewrites every answer: compressed bodies would only cost CPU twice.
                    headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
                )
                context.sent_at = context.sent_at or time.monotonic()
                try:
                    async with asyncio.timeout(ctx.options.upstream_header_timeout_s):
                        response = await self.client.send(request, stream=True)
                except (httpx.HTTPError, TimeoutError) as exc:
                    reason = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                    failure = (502, engine_error(f"backend {backend.name} failed: {reason}"), None)
                else:
                    if response.status_code < 500:
                        self.registry.succeeded(backend, context.model)
                        return response
                    body = await response.aread()
                    await response.aclose()
                    reason = f"answered {response.status_code}"
                    failure = (response.status_code, body, response.headers.get("Content-Type"))
                self.registry.failed(backend, reason)
            log.warning("request %s: %s %s", context.request_id, backend.name, reason)
            tried.add(backend.id)
            if await self.gate.transfer(context, frozenset(tried)) is None:
                break
            FAILOVERS.labels(context.model).inc()
            log.info("request %s: failing over to %s", context.request_id, context.backend.name)
        context.error = failure[1].decode("utf-8", "replace")[:500]
        return failure

    async def relay(self, request: web.Request) -> web.StreamResponse:
        """The relay's one route: open the backend stream for a flow the request hook sent here, pipe it."""
        context = self.relayed.pop(request.headers.get(RELAY_HEADER, ""), None)
        if context is None:
            return web.json_response({"error": "unknown relayed request"}, status=404)
        answer = await self.open(context)
        if not isinstance(answer, httpx.Response):
            status, body, media_type = answer
            return web.Response(status=status, body=body, content_type=(media_type or "application/json").split(";")[0])
        relayed = web.StreamResponse(status=answer.status_code)
        relayed.content_type = answer.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        try:
            await relayed.prepare(request)
            try:
                async for chunk in answer.aiter_raw():
                    await relayed.write(chunk)
            except httpx.HTTPError as exc:  # the backend broke off: end early, the translator reports it
                context.error = f"backend {context.backend.name} broke off mid-stream: {exc!r}"
                self.registry.failed(context.backend, context.error)
            await relayed.write_eof()
        except ConnectionResetError:  # the caller left; closing the backend stream stops the generation
            pass
        finally:
            await answer.aclose()
        return relayed

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind == "admin":
            return
        backend = context.backend.name if context.backend else ""
        REQUESTS.labels(context.route.endpoint, context.model or "", backend, str(flow.response.status_code)).inc()

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.backend is None:
            return
        self.relayed.pop(context.request_id, None)
        log.warning("request %s to %s failed: %s", context.request_id, context.backend.name, flow.error)
        REQUESTS.labels(context.route.endpoint, context.model or "", context.backend.name, "error").inc()


def engine_error(message: str) -> bytes:
    """An error body every engine error translator reads."""
    return json.dumps({"error": message}).encode()
