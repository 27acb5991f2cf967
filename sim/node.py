"""What every simulated node shares: configuration, generation slots, pacing, faults, stats, `/_sim/*`.

The engine modules (`sim.ollama`, `sim.vllm`) add their own routes on top and decide the wire format;
this module decides when tokens may flow and how a node misbehaves on request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

log = logging.getLogger("sim")

FAULT_MODES = ("error500", "drop", "hang", "drop_midstream")
DROP_AFTER_CHUNKS = 3
RECENT_REQUESTS = 100
KV_CACHE_TOKENS_PER_SLOT = 2048

DROP_MIDSTREAM = web.RequestKey("drop_midstream", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class NodeConfig:
    engine: str  # "ollama" | "vllm"
    models: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 0
    tokens_per_s: float = 200.0  # 0 streams as fast as possible
    ttft_ms: float = 0.0
    slots: int = 4
    load_ms: float = 0.0
    max_loaded: int = 2
    vision_models: tuple[str, ...] = ()
    embedding_models: tuple[str, ...] = ()

    @property
    def served_models(self) -> tuple[str, ...]:
        """Every model the node answers for, in the order given (vision and embedding models included)."""
        return tuple(dict.fromkeys(self.models + self.vision_models + self.embedding_models))


class Slots:
    """At most `size` generations at once; the rest wait first come, first served, as in vLLM's queue."""

    def __init__(self, size: int):
        self.size = size
        self.running: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self._queue: deque[tuple[str, asyncio.Future]] = deque()
        self.peak = 0  # most requests running and waiting at once since the last reset: what callers sent

    @property
    def in_flight(self) -> int:
        return sum(self.running.values()) + sum(self.waiting.values())

    @asynccontextmanager
    async def hold(self, model: str) -> AsyncIterator[None]:
        self.peak = max(self.peak, self.in_flight + 1)
        if sum(self.running.values()) >= self.size or self._queue:
            await self._wait_for_turn(model)
        else:
            self.running[model] += 1
        try:
            yield
        finally:
            self._release(model)

    async def _wait_for_turn(self, model: str) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._queue.append((model, turn))
        self.waiting[model] += 1
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(model)  # the slot was handed over just as the caller went away
            else:
                self._queue.remove((model, turn))
                self.waiting[model] -= 1
            raise

    def _release(self, model: str) -> None:
        """Free a slot, or hand it straight to the longest waiter so no newcomer can overtake."""
        self.running[model] -= 1
        if self._queue:
            next_model, turn = self._queue.popleft()
            self.waiting[next_model] -= 1
            self.running[next_model] += 1
            turn.set_result(None)


class Run:
    """One admitted generation: paces its tokens and remembers when they flowed."""

    def __init__(self, model: str, prompt_tokens: int, config: NodeConfig):
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.generated = 0
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.finish_reason: str | None = None  # set by the engine when the answer completes
        self._ttft = config.ttft_ms / 1000
        self._seconds_per_token = 1 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0

    async def prefill(self) -> None:
        """The time to first token: prompt evaluation."""
        await _sleep_until(self.started + self._ttft)

    async def tokens(self, count: int = 1) -> None:
        """Wait until `count` more tokens would have been generated."""
        if self.first_token_at is None:
            await self.prefill()
            self.first_token_at = time.monotonic()
        self.generated += count
        await _sleep_until(self.first_token_at + (self.generated - 1) * self._seconds_per_token)

    @property
    def prompt_eval_seconds(self) -> float:
        return (self.first_token_at or time.monotonic()) - self.started

    @property
    def eval_seconds(self) -> float:
        return time.monotonic() - (self.first_token_at or time.monotonic())


class Faults:
    """The next `count` inference requests fail in `mode`."""

    def __init__(self):
        self.mode: str | None = None
        self.remaining = 0

    def arm(self, mode: str, count: int) -> None:
        self.mode, self.remaining = mode, count

    def take(self) -> str | None:
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        return self.mode


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)
    prompt_tokens: Counter = field(default_factory=Counter)
    completion_tokens: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)  # (model, finish reason)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))


class BadRequest(Exception):
    """A request the engine would refuse: status, message and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class ConnectionDropped(Exception):
    """The drop_midstream fault cut the connection; the handler stops writing."""


class Node:
    """One simulated engine process: the state its routes share."""

    def __init__(self, config: NodeConfig, error_body: Callable[[int, str], dict]):
        self.config = config
        self.slots = Slots(config.slots)
        self.faults = Faults()
        self.stats = Stats()
        self.runs: set[Run] = set()
        self.error_body = error_body
        self._hung_released = asyncio.Event()
        self._request_ids = 0

    def slot(self, model: str):
        return self.slots.hold(model)

    @asynccontextmanager
    async def running(self, model: str, prompt_tokens: int) -> AsyncIterator[Run]:
        """Count a generation as running (it holds a slot already) and record its tokens when it ends."""
        run = Run(model, prompt_tokens, self.config)
        self.runs.add(run)
        try:
            yield run
        finally:
            self.runs.discard(run)
            self.stats.prompt_tokens[model] += prompt_tokens
            self.stats.completion_tokens[model] += run.generated
            if run.finish_reason:
                self.stats.finished[model, run.finish_reason] += 1

    def kv_cache_usage(self) -> float:
        capacity = KV_CACHE_TOKENS_PER_SLOT * self.config.slots
        return min(1.0, sum(r.prompt_tokens + r.generated for r in self.runs) / capacity)

    def error_response(self, status: int, message: str) -> web.Response:
        return web.json_response(self.error_body(status, message), status=status)

    def inference(self, handler: Handler) -> Handler:
        """Wrap an inference route so an armed fault strikes before (or, midstream, during) the answer."""

        async def faulty(request: web.Request) -> web.StreamResponse:
            fault = self.faults.take()
            if fault == "error500":
                return self.error_response(500, "simulated failure (sim fault error500)")
            if fault == "drop":
                return _drop(request)
            if fault == "hang":
                await self._hung_released.wait()
                return _drop(request)
            request[DROP_MIDSTREAM] = fault == "drop_midstream"
            try:
                return await handler(request)
            except ConnectionDropped as dropped:
                return dropped.args[0]

        return faulty

    def add_sim_routes(self, app: web.Application, extra_stats: Callable[[], dict]) -> None:
        async def arm_faults(request: web.Request) -> web.Response:
            body = await json_body(request) or {}
            mode, count = body.get("mode"), body.get("count", 1)
            if mode not in FAULT_MODES or not isinstance(count, int) or count < 0:
                return web.json_response(
                    {
                        "error": f"expected mode in {list(FAULT_MODES)} and a count >= 0, got {mode!r}, {count!r}"
                    },
                    status=400,
                )
            self.faults.arm(mode, count)
            return web.json_response({"mode": mode, "remaining": count})

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.stats_snapshot() | extra_stats())

        async def reset(request: web.Request) -> web.Response:
            self.stats = Stats()
            self.faults = Faults()
            self.slots.peak = self.slots.in_flight
            self._hung_released.set()
            self._hung_released = asyncio.Event()
            return web.json_response({"reset": True})

        app.router.add_post("/_sim/faults", arm_faults)
        app.router.add_get("/_sim/stats", stats)
        app.router.add_post("/_sim/reset", reset)

    def stats_snapshot(self) -> dict:
        models = self.config.served_models
        return {
            "engine": self.config.engine,
            "models": list(models),
            "requests": dict(self.stats.requests),
            "tokens": {
                m: {"prompt": self.stats.prompt_tokens[m], "completion": self.stats.completion_tokens[m]}
                for m in sorted(set(self.stats.prompt_tokens) | set(self.stats.completion_tokens))
            },
            "running": sum(self.slots.running.values()),
            "waiting": sum(self.slots.waiting.values()),
            "peak_in_flight": self.slots.peak,
            "faults": {"mode": self.faults.mode, "remaining": self.faults.remaining},
            "recent": list(self.stats.recent),
        }

    @web.middleware
    async def record_and_log(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Remember what callers sent (tests read it from /_sim/stats) and log one line per request."""
        self._request_ids += 1
        request_id = self._request_ids
        started = time.monotonic()
        if not request.path.startswith("/_sim/"):
            raw = await request.read()
            self.stats.requests[request.path] += 1
            self.stats.recent.append(
                {
                    "id": request_id,
                    "method": request.method,
                    "path": request.path,
                    "query": request.query_string,
                    "headers": dict(request.headers),
                    "body": _decoded(raw),
                }
            )
        status = 499
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            log.info(
                "%s #%d %s %s -> %d in %.1f ms",
                self.config.engine,
                request_id,
                request.method,
                request.path_qs,
                status,
                (time.monotonic() - started) * 1000,
            )


class ChunkStream:
    """A streamed body (NDJSON or SSE); under the drop_midstream fault the connection dies after a few
    chunks, always before the one that finishes the answer."""

    def __init__(self, request: web.Request, content_type: str):
        self._request = request
        self._response = web.StreamResponse(headers={"Content-Type": content_type})
        self._sent = 0

    async def open(self) -> None:
        await self._response.prepare(self._request)

    async def send(self, data: bytes, finishing: bool = False) -> None:
        """Write one chunk; `finishing` marks the chunk that tells the caller the answer is complete."""
        if self._request.get(DROP_MIDSTREAM) and (self._sent >= DROP_AFTER_CHUNKS or finishing):
            raise ConnectionDropped(_drop(self._request, self._response))
        await self._response.write(data)
        self._sent += 1

    async def close(self) -> web.StreamResponse:
        await self._response.write_eof()
        return self._response


async def send_json(request: web.Request, body: dict) -> web.StreamResponse:
    """A whole JSON answer; under the drop_midstream fault only its first half arrives."""
    data = json.dumps(body).encode()
    if not request.get(DROP_MIDSTREAM):
        return web.Response(body=data, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    return _drop(request, response)


async def json_body(request: web.Request) -> dict | None:
    """The request's JSON object, or None when the body is not one."""
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection without finishing the answer; the returned response is never completed."""
    if request.transport is not None:
        request.transport.close()
    return response or web.Response()


def _decoded(raw: bytes):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
