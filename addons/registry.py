"""Backend registry: the backends in the database, what each serves and whether it answers.

A background task re-reads the `backend` table and polls every backend (addons/polling.py)
every `backend_poll_s`; requests only ever read the in-memory views this task keeps current.
What a poll finds goes to the database through the writer (health and models when they change,
a telemetry sample every `telemetry_sample_s`) and to the Prometheus gauges.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx
from mitmproxy import ctx

from addons import metrics
from addons.polling import (
    POLLERS,
    EngineLoad,
    ModelView,
    PollLoop,
    mark_resident,
    poll_gpus,
    poll_ollama_residency,
)
from addons.writer import StoreWriter
from scheduler.breaker import OPEN, Breaker
from store.models import Backend, BackendModel, ModelAlias, TelemetrySample, utcnow
from telemetry_agent.client import GpuReading, summarize

log = logging.getLogger(__name__)

LATENCY_EMA_ALPHA = 0.2  # weight of the newest poll round trip in a backend's latency EMA

__all__ = ["BackendRegistry", "BackendView", "ModelView", "model_aliases"]


def model_aliases(name: str) -> set[str]:
    """Ollama answers `llama3.2` and `llama3.2:latest` alike; match both spellings."""
    if name.endswith(":latest"):
        return {name, name.removesuffix(":latest")}
    if ":" not in name:
        return {name, f"{name}:latest"}
    return {name}


@dataclass
class BackendView:
    id: int
    name: str
    url: str
    engine: str
    max_concurrent: int
    enabled: bool
    draining: bool
    priority: int
    telemetry_url: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    healthy: bool = False
    last_error: str = ""
    version: str | None = None
    native_endpoints: tuple[str, ...] = ()  # client APIs the engine serves itself, passed through untranslated
    models: dict[str, ModelView] = field(default_factory=dict)
    load: EngineLoad = field(default_factory=EngineLoad)
    gpus: list[GpuReading] = field(default_factory=list)
    in_flight: int = 0
    breaker: Breaker = field(default_factory=Breaker)
    shown: dict[tuple, tuple] = field(default_factory=dict)  # Ollama /api/show answers, vLLM's routes (polling.py)
    recorded_state: tuple | None = None  # what the database last heard from this process
    sampled_at: float = 0.0
    refresh_seen: object = None  # the last admin refresh request acted on
    latency_ema_ms: float | None = None  # of poll round trips: how quickly the node answers at all
    residency_task: asyncio.Task | None = None  # an Ollama node's /api/ps being re-read
    residency_stale: bool = False  # asked again while that read was under way

    def state(self) -> tuple:
        return self.healthy, self.last_error, tuple(sorted((m.name, m.resident) for m in self.models.values()))

    @property
    def accepts_requests(self) -> bool:
        return self.enabled and self.healthy and not self.draining and self.breaker.allows(time.monotonic())

    def served_name(self, requested: str) -> str | None:
        """This backend's own name for `requested`, if it serves that model."""
        for alias in model_aliases(requested):
            if alias in self.models:
                return alias
        return None


def backend_rows() -> list[dict]:
    return list(Backend.select().order_by(Backend.id).dicts())


def configuration_rows() -> tuple[list[dict], dict[str, str]]:
    """The backend rows and the admin's model aliases (alias → model), read together on a worker thread."""
    return backend_rows(), {row.alias: row.model for row in ModelAlias.select()}


def gpu_indices(text: str) -> list[int]:
    return [int(part) for part in text.replace(" ", "").split(",") if part.isdigit()]


def record_poll(backend_id: int, healthy: bool, error: str, models: dict[str, ModelView] | None) -> None:
    """Store what a poll found, for the admin app's pages (runs on the writer thread)."""
    Backend.update(health="healthy" if healthy else "unhealthy", last_error=error, last_checked_at=utcnow()).where(
        Backend.id == backend_id
    ).execute()
    if models is None:
        return
    BackendModel.delete().where(BackendModel.backend == backend_id, BackendModel.name.not_in(list(models) or [""])).execute()
    for model in models.values():
        values = {
            "resident": model.resident, "size_bytes": model.size_bytes, "vram_bytes": model.vram_bytes,
            "context_length": model.context_length, "capabilities": json.dumps(list(model.capabilities)),
            "updated_at": utcnow(),
        }
        updated = BackendModel.update(**values).where(
            BackendModel.backend == backend_id, BackendModel.name == model.name
        ).execute()
        if not updated:
            BackendModel.create(backend=backend_id, name=model.name, **values)


def telemetry_sample(view: BackendView) -> dict:
    gpus = summarize(view.gpus) if view.gpus else None
    return {
        "backend": view.id,
        "models_loaded": sum(1 for m in view.models.values() if m.resident),
        "requests_running": view.load.running if view.load.running is not None else view.in_flight,
        "requests_waiting": view.load.waiting,
        "kv_cache_usage": view.load.kv_cache_usage,
        "gpu_utilization": gpus.gpu_utilization if gpus else None,
        "gpu_memory_used_bytes": gpus.memory_used_bytes if gpus else None,
        "gpu_memory_total_bytes": gpus.memory_total_bytes if gpus else None,
        "details": json.dumps({
            "prefix_cache_hit_rate": view.load.prefix_cache_hit_rate,
            "gpus": [asdict(reading) for reading in view.gpus],
        }),
    }


def store_samples(samples: list[dict], latencies: dict[int, float]) -> None:
    """Telemetry samples, and each backend's latency EMA for the admin pages (runs on the writer thread)."""
    TelemetrySample.insert_many(samples).execute()
    for backend_id, latency_ms in latencies.items():
        Backend.update(latency_ema_ms=round(latency_ms, 3)).where(Backend.id == backend_id).execute()


def prune_telemetry(older_than: dt.datetime) -> None:
    TelemetrySample.delete().where(TelemetrySample.taken_at < older_than).execute()


class BackendRegistry:
    """Keeps `views` (backend id → BackendView) current from the database and from polling the backends."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.views: dict[int, BackendView] = {}
        self.aliases: dict[str, str] = {}  # an admin's model aliases, alias → model
        self.database_ok = False
        self.task: asyncio.Task | None = None
        self.polls: PollLoop | None = None
        self.listeners: list[Callable[[], None]] = []  # told after every refresh and when a breaker opens
        self.pruned_at = 0.0

    def load(self, loader):
        loader.add_option(
            "backend_poll_s", int, 2,
            "Seconds between re-reading the backend table and polling every backend for health, models and load.",
        )
        loader.add_option("backend_poll_timeout_s", int, 2, "Timeout of one poll of a backend.")
        loader.add_option(
            "breaker_failures", int, 3,
            "Consecutive failed requests (connection refused, timeout or 5xx before the first byte, or a stream "
            "cut short) that take a backend out of rotation.",
        )
        loader.add_option(
            "breaker_cooldown_s", int, 10,
            "Seconds a backend stays out after its breaker opens; then one request probes it.",
        )
        loader.add_option("telemetry_sample_s", int, 30, "Seconds between stored telemetry samples of a backend.")
        loader.add_option("telemetry_retention_h", int, 168, "Hours telemetry samples are kept.")

    def running(self):
        self.polls = PollLoop(ctx.options.backend_poll_timeout_s)
        self.task = asyncio.get_running_loop().create_task(self.refresh_forever())

    async def done(self):
        for task in (self.task, *(view.residency_task for view in self.views.values())):
            if task:
                task.cancel()
        if self.polls:
            self.polls.stop()

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("backend refresh failed")
            await asyncio.sleep(ctx.options.backend_poll_s)

    async def refresh(self) -> None:
        try:
            rows, self.aliases = await asyncio.to_thread(configuration_rows)
            self.database_ok = True
        except Exception as exc:  # any database failure: keep serving from what we know
            self.database_ok = False
            log.warning("cannot read backends from the database: %s", exc)
            return
        self.reconcile(rows)
        await asyncio.gather(*(self.poll(view) for view in self.views.values() if view.enabled))
        self.store_telemetry()
        self.notify()

    def reconcile(self, rows: list[dict]) -> None:
        """Take the database's word on configuration; keep what only this process knows (health, in-flight)."""
        current = {}
        for row in rows:
            view = self.views.get(row["id"]) or BackendView(
                id=row["id"], name=row["name"], url=row["url"], engine=row["engine"],
                max_concurrent=row["max_concurrent"], enabled=row["enabled"], draining=row["draining"],
                priority=row["priority"],
                breaker=Breaker(ctx.options.breaker_failures, ctx.options.breaker_cooldown_s),
            )
            view.name, view.url, view.engine = row["name"], row["url"].rstrip("/"), row["engine"]
            view.max_concurrent, view.enabled = row["max_concurrent"], row["enabled"]
            view.draining, view.priority = row["draining"], row["priority"]
            view.telemetry_url, view.gpu_indices = row["telemetry_url"], gpu_indices(row["gpu_indices"] or "")
            if row["refresh_requested_at"] != view.refresh_seen:
                if view.refresh_seen is not None or row["id"] in self.views:
                    log.info("backend %s: refresh asked for; forgetting its failures and descriptions", view.name)
                view.refresh_seen = row["refresh_requested_at"]
                view.breaker.succeeded()
                view.shown.clear()
            current[row["id"]] = view
        self.views = current

    async def poll(self, view: BackendView) -> None:
        try:
            found, took_s = await self.polls.timed(POLLERS[view.engine](self.polls.client, view.url, view.shown))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            if view.healthy or not view.last_error:
                log.warning("backend %s unhealthy: %s", view.name, error)
            view.healthy, view.last_error = False, error
        else:
            if not view.healthy:
                log.info("backend %s healthy: %d models in %.0f ms", view.name, len(found.models), 1000 * took_s)
            view.healthy, view.last_error, view.models = True, "", found.models
            view.latency_ema_ms = 1000 * took_s if view.latency_ema_ms is None else \
                view.latency_ema_ms + LATENCY_EMA_ALPHA * (1000 * took_s - view.latency_ema_ms)
            view.version, view.load, view.native_endpoints = found.version, found.load, found.native_endpoints
        if view.telemetry_url:
            await self.poll_gpus(view)
        self.publish(view)

    def publish(self, view: BackendView) -> None:
        """Show what was learnt of a backend: Prometheus gauges always, the database when it changed."""
        self.export(view)
        if view.state() != view.recorded_state:
            view.recorded_state = view.state()
            healthy, error, models = view.healthy, view.last_error, dict(view.models) if view.healthy else None
            self.writer.submit(lambda: record_poll(view.id, healthy, error, models))

    async def poll_gpus(self, view: BackendView) -> None:
        try:
            view.gpus = await self.polls.run(poll_gpus(
                self.polls.client, view.telemetry_url, os.environ.get("TELEMETRY_SECRET", ""), view.gpu_indices))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("backend %s: no GPU telemetry from %s: %s", view.name, view.telemetry_url, exc)
            view.gpus = []

    def export(self, view: BackendView) -> None:
        """The backend's state as Prometheus gauges."""
        metrics.BACKEND_UP.labels(view.name).set(1 if view.healthy else 0)
        metrics.BACKEND_BREAKER_OPEN.labels(view.name).set(1 if view.breaker.state == OPEN else 0)
        for model in view.models.values():
            metrics.MODEL_RESIDENT.labels(view.name, model.name).set(1 if model.resident else 0)
        for gauge, value in ((metrics.BACKEND_WAITING, view.load.waiting), (metrics.BACKEND_RUNNING, view.load.running),
                             (metrics.KV_CACHE_USAGE, view.load.kv_cache_usage)):
            if value is not None:
                gauge.labels(view.name).set(value)
        for reading in view.gpus:
            if reading.utilization_gpu_pct is not None:
                metrics.GPU_UTILIZATION.labels(view.name, str(reading.index)).set(reading.utilization_gpu_pct / 100)
            if reading.memory_used_bytes is not None:
                metrics.GPU_MEMORY_USED.labels(view.name, str(reading.index)).set(reading.memory_used_bytes)

    def store_telemetry(self) -> None:
        """A sample per backend every telemetry_sample_s, and an hourly prune past the retention."""
        now = time.monotonic()
        due = [view for view in self.views.values() if view.enabled and now - view.sampled_at >= ctx.options.telemetry_sample_s]
        for view in due:
            view.sampled_at = now
        samples = [telemetry_sample(view) for view in due]
        latencies = {view.id: view.latency_ema_ms for view in due if view.latency_ema_ms is not None}
        if samples:
            self.writer.submit(lambda: store_samples(samples, latencies))
        if now - self.pruned_at >= 3600:
            self.pruned_at = now
            cutoff = utcnow() - dt.timedelta(hours=ctx.options.telemetry_retention_h)
            self.writer.submit(lambda: prune_telemetry(cutoff))

    def notify(self) -> None:
        for listener in self.listeners:
            listener()

    def succeeded(self, view: BackendView, model: str) -> None:
        """`view` answered a request for `model`. An Ollama node answers once the model is in memory: if it
        was not resident before, the node has just loaded it and may have evicted another, so its residency
        is re-read now rather than at the next poll, and the next choice of backend knows what it holds."""
        view.breaker.succeeded()
        metrics.series(metrics.UPSTREAM_ATTEMPTS, view.name, "ok").inc()
        served = view.models.get(view.served_name(model) or model)
        if view.engine != "ollama" or (served is not None and served.resident):
            return
        if view.residency_task and not view.residency_task.done():
            view.residency_stale = True  # the read under way may predate this request's load: read once more
        else:
            view.residency_task = asyncio.get_running_loop().create_task(self.reread_residency(view))

    async def reread_residency(self, view: BackendView) -> None:
        view.residency_stale = True
        while view.residency_stale:
            view.residency_stale = False
            before = view.state()
            try:
                ps = await self.polls.run(poll_ollama_residency(self.polls.client, view.url))
                mark_resident(view.models, ps)
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # the next full poll will tell
                log.debug("backend %s: cannot re-read /api/ps: %s", view.name, exc)
                return
            if view.state() != before:
                self.publish(view)
                self.notify()

    def failed(self, view: BackendView, reason: str) -> None:
        """A request to `view` failed; when that opens its breaker, nobody is sent there for a while."""
        metrics.UPSTREAM_ATTEMPTS.labels(view.name, "failed").inc()
        if view.breaker.failed(time.monotonic()):
            log.warning("backend %s out for %.0f s after %d failures in a row (last: %s)",
                        view.name, view.breaker.cooldown_s, view.breaker.failures, reason)
            metrics.BACKEND_BREAKER_OPEN.labels(view.name).set(1)
            self.notify()

    def resolve(self, model: str | None) -> str | None:
        """The model an admin's alias names (typed as `coder` or `coder:latest`); any other name as it is."""
        if not model:
            return model
        return self.aliases.get(model) or self.aliases.get(model.removesuffix(":latest")) or model

    def serving(self, model: str) -> list[BackendView]:
        """Backends that take new requests for `model`."""
        return [view for view in self.views.values() if view.accepts_requests and view.served_name(model)]

    def serves(self, model: str | None) -> bool:
        """Whether any enabled backend knows `model` (under any of its spellings)."""
        return bool(model) and any(view.served_name(model) for view in self.views.values() if view.enabled)

    def context_length(self, model: str | None) -> int | None:
        """The longest context any backend serving the model reports (None: none says)."""
        lengths = [view.models[name].context_length for view in self.views.values()
                   if model and (name := view.served_name(model)) and view.models[name].context_length]
        return max(lengths, default=None)

    def known_models(self) -> set[str]:
        return {name for view in self.views.values() if view.accepts_requests for name in view.models}

    def capabilities(self, model: str) -> list[tuple[str, set[str]]]:
        """(engine, what it can do) for each enabled backend serving the model; an empty set: it does not say."""
        return [(view.engine, set(view.models[name].capabilities)) for view in self.views.values()
                if view.enabled and (name := view.served_name(model))]

    @property
    def ready(self) -> bool:
        return self.database_ok and any(view.accepts_requests for view in self.views.values())
