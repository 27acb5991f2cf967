"""Backend registry: the backends in the database, what each serves and whether it answers.

A background task re-reads the `backend` table and polls every backend (Ollama `/api/tags` and
`/api/ps`, vLLM `/health` and `/v1/models`) every `backend_poll_s`; requests only ever read the
in-memory views this task keeps current.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from mitmproxy import ctx

from addons.writer import StoreWriter
from scheduler.breaker import Breaker
from store.models import Backend, BackendModel, utcnow

log = logging.getLogger(__name__)


def model_aliases(name: str) -> set[str]:
    """Ollama answers `llama3.2` and `llama3.2:latest` alike; match both spellings."""
    if name.endswith(":latest"):
        return {name, name.removesuffix(":latest")}
    if ":" not in name:
        return {name, f"{name}:latest"}
    return {name}


@dataclass
class ModelView:
    name: str
    resident: bool = False
    size_bytes: int | None = None
    vram_bytes: int | None = None
    details: dict = field(default_factory=dict)  # the engine's own listing entry, for catalogs
    context_length: int | None = None


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
    healthy: bool = False
    last_error: str = ""
    version: str | None = None
    models: dict[str, ModelView] = field(default_factory=dict)
    in_flight: int = 0
    recorded_state: tuple | None = None  # what the database last heard from this process
    breaker: Breaker = field(default_factory=Breaker)

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


async def poll_ollama(client: httpx.AsyncClient, backend: BackendView) -> dict[str, ModelView]:
    tags, ps, version = await asyncio.gather(
        client.get(f"{backend.url}/api/tags"), client.get(f"{backend.url}/api/ps"),
        client.get(f"{backend.url}/api/version"),
    )
    for response in (tags, ps):
        response.raise_for_status()
    backend.version = version.json().get("version") if version.status_code == 200 else None
    models = {
        entry["name"]: ModelView(name=entry["name"], size_bytes=entry.get("size"), details=entry)
        for entry in tags.json().get("models", [])
    }
    for entry in ps.json().get("models", []):
        model = models.setdefault(entry["name"], ModelView(name=entry["name"], details=entry))
        model.resident = True
        model.vram_bytes = entry.get("size_vram")
    return models


async def poll_vllm(client: httpx.AsyncClient, backend: BackendView) -> dict[str, ModelView]:
    health, listing = await asyncio.gather(client.get(f"{backend.url}/health"), client.get(f"{backend.url}/v1/models"))
    health.raise_for_status()
    listing.raise_for_status()
    return {
        entry["id"]: ModelView(name=entry["id"], resident=True, details=entry, context_length=entry.get("max_model_len"))
        for entry in listing.json().get("data", [])
    }


POLLERS = {"ollama": poll_ollama, "vllm": poll_vllm}


def record_poll(backend_id: int, healthy: bool, error: str, models: dict[str, ModelView] | None) -> None:
    """Store what a poll found, for the admin app's pages (runs on the writer thread)."""
    Backend.update(health="healthy" if healthy else "unhealthy", last_error=error, last_checked_at=utcnow()).where(
        Backend.id == backend_id
    ).execute()
    if models is None:
        return
    BackendModel.delete().where(BackendModel.backend == backend_id, BackendModel.name.not_in(list(models) or [""])).execute()
    for model in models.values():
        values = dict(
            resident=model.resident, size_bytes=model.size_bytes, vram_bytes=model.vram_bytes,
            context_length=model.context_length, updated_at=utcnow(),
        )
        updated = BackendModel.update(**values).where(
            BackendModel.backend == backend_id, BackendModel.name == model.name
        ).execute()
        if not updated:
            BackendModel.create(backend=backend_id, name=model.name, capabilities=json.dumps([]), **values)


class BackendRegistry:
    """Keeps `views` (backend id → BackendView) current from the database and from polling the backends."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.views: dict[int, BackendView] = {}
        self.database_ok = False
        self.task: asyncio.Task | None = None
        self.client: httpx.AsyncClient | None = None
        self.listeners: list[Callable[[], None]] = []  # told after every refresh

    def load(self, loader):
        loader.add_option(
            "backend_poll_s", int, 2,
            "Seconds between re-reading the backend table and polling every backend for health and models.",
        )
        loader.add_option(
            "backend_poll_timeout_s", int, 2, "Timeout of one health or model poll of a backend.",
        )
        loader.add_option(
            "breaker_failures", int, 3,
            "Consecutive failed requests (connection refused, timeout or 5xx before the first byte, or a stream "
            "cut short) that take a backend out of rotation.",
        )
        loader.add_option(
            "breaker_cooldown_s", int, 10,
            "Seconds a backend stays out after its breaker opens; then one request probes it.",
        )

    def running(self):
        self.client = httpx.AsyncClient(timeout=ctx.options.backend_poll_timeout_s, trust_env=False)
        self.task = asyncio.get_running_loop().create_task(self.refresh_forever())

    async def done(self):
        if self.task:
            self.task.cancel()
        if self.client:
            await self.client.aclose()

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("backend refresh failed")
            await asyncio.sleep(ctx.options.backend_poll_s)

    async def refresh(self) -> None:
        try:
            rows = await asyncio.to_thread(backend_rows)
            self.database_ok = True
        except Exception as exc:
            self.database_ok = False
            log.warning("cannot read backends from the database: %s", exc)
            return
        self.reconcile(rows)
        await asyncio.gather(*(self.poll(view) for view in self.views.values() if view.enabled))
        for listener in self.listeners:
            listener()

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
            current[row["id"]] = view
        self.views = current

    async def poll(self, view: BackendView) -> None:
        started = time.monotonic()
        try:
            models = await POLLERS[view.engine](self.client, view)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            if view.healthy or not view.last_error:
                log.warning("backend %s unhealthy: %s", view.name, error)
            view.healthy, view.last_error = False, error
        else:
            if not view.healthy:
                log.info("backend %s healthy: %d models in %.0f ms", view.name, len(models), 1000 * (time.monotonic() - started))
            view.healthy, view.last_error, view.models = True, "", models
        if view.state() != view.recorded_state:
            view.recorded_state = view.state()
            healthy, error, models = view.healthy, view.last_error, dict(view.models) if view.healthy else None
            self.writer.submit(lambda: record_poll(view.id, healthy, error, models))

    def succeeded(self, view: BackendView) -> None:
        view.breaker.succeeded()

    def failed(self, view: BackendView, reason: str) -> None:
        """A request to `view` failed; when that opens its breaker, nobody is sent there for a while."""
        if view.breaker.failed(time.monotonic()):
            log.warning("backend %s out for %.0f s after %d failures in a row (last: %s)",
                        view.name, view.breaker.cooldown_s, view.breaker.failures, reason)
            for listener in self.listeners:
                listener()

    def serving(self, model: str) -> list[BackendView]:
        """Backends that take new requests for `model`."""
        return [view for view in self.views.values() if view.accepts_requests and view.served_name(model)]

    def known_models(self) -> set[str]:
        return {name for view in self.views.values() if view.accepts_requests for name in view.models}

    @property
    def ready(self) -> bool:
        return self.database_ok and any(view.accepts_requests for view in self.views.values())
