"""What each engine says about itself when polled: models, residency, capabilities, load, GPUs.

Ollama: `/api/tags` (models), `/api/ps` (resident, VRAM), `/api/version`, and `/api/show` once
per model (capabilities, context length). vLLM: `/health`, `/v1/models` (max_model_len),
`/metrics` (running, waiting, KV-cache use, prefix-cache hits) and, once per set of served models,
`/openapi.json`: vLLM routes only the APIs its runner serves (a pooling runner embeds and scores, a
generating one completes), so its routes are its capabilities, and say which client APIs it serves
itself (the Messages API). Ollama serves the Messages API from 0.14: its version says. A node running
the telemetry agent adds its GPUs. The parsing is plain functions; the pollers only fetch, on a `PollLoop`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from telemetry_agent.client import GpuReading, parse_report, select_gpus
from translators.mapping import NATIVE_ENDPOINTS, OLLAMA_NATIVE_SINCE

T = TypeVar("T")


@dataclass
class ModelView:
    name: str
    resident: bool = False
    size_bytes: int | None = None
    vram_bytes: int | None = None
    details: dict = field(default_factory=dict)  # the engine's own listing entry, for catalogs
    context_length: int | None = None
    # Ollama's words (completion, vision, tools, thinking, embedding); for vLLM, those its routes imply
    # (completion, embedding, score, rerank, tokenize); empty: the node does not say.
    capabilities: tuple[str, ...] = ()


@dataclass
class EngineLoad:
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None  # 0..1
    prefix_cache_hit_rate: float | None = None  # 0..1 since the engine started


@dataclass
class Poll:
    models: dict[str, ModelView]
    version: str | None = None
    load: EngineLoad = field(default_factory=EngineLoad)
    native_endpoints: tuple[str, ...] = ()  # client APIs the engine serves itself (translators.pipeline)


def version_key(version: str | None) -> tuple[int, ...]:
    """'0.10.1' sorts after '0.9.0'; a pre-release ('0.9.1-rc1') as its release; unreadable → (), before any."""
    numbers = []
    for part in (version or "").split("-", 1)[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def ollama_native_endpoints(version: str | None) -> tuple[str, ...]:
    return tuple(endpoint for endpoint, since in OLLAMA_NATIVE_SINCE.items() if version_key(version) >= since)


def parse_vllm_metrics(text: str) -> EngineLoad:
    """vLLM's Prometheus text, summed over its model_name labels (one engine may serve several)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    kv = totals.get("vllm:kv_cache_usage_perc", totals.get("vllm:gpu_cache_usage_perc"))
    queries = totals.get("vllm:prefix_cache_queries_total") or totals.get("vllm:gpu_prefix_cache_queries_total")
    hits = totals.get("vllm:prefix_cache_hits_total", totals.get("vllm:gpu_prefix_cache_hits_total"))
    return EngineLoad(
        running=int(totals["vllm:num_requests_running"]) if "vllm:num_requests_running" in totals else None,
        waiting=int(totals["vllm:num_requests_waiting"]) if "vllm:num_requests_waiting" in totals else None,
        kv_cache_usage=kv,
        prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
    )


def capabilities_from_show(show: dict) -> tuple[tuple[str, ...], int | None]:
    """Ollama `/api/show`: the capability list and the context length from `model_info`."""
    context_length = next(
        (int(value) for key, value in (show.get("model_info") or {}).items() if key.endswith(".context_length")), None
    )
    return tuple(show.get("capabilities") or ()), context_length


async def poll_ollama(client: httpx.AsyncClient, url: str, shown: dict[str, tuple]) -> Poll:
    """`shown` caches /api/show answers by (name, digest): a model is described once, not every poll."""
    tags, ps, version = await asyncio.gather(
        client.get(f"{url}/api/tags"), poll_ollama_residency(client, url), client.get(f"{url}/api/version"),
    )
    tags.raise_for_status()
    models = {
        entry["name"]: ModelView(name=entry["name"], size_bytes=entry.get("size"), details=entry)
        for entry in tags.json().get("models", [])
    }
    mark_resident(models, ps)
    unknown = [name for name, model in models.items() if (name, model.details.get("digest")) not in shown]
    answers = await asyncio.gather(*(client.post(f"{url}/api/show", json={"model": name}) for name in unknown))
    for name, answer in zip(unknown, answers):
        if answer.status_code == 200:
            shown[name, models[name].details.get("digest")] = capabilities_from_show(answer.json())
    for name, model in models.items():
        model.capabilities, model.context_length = shown.get((name, model.details.get("digest")), ((), None))
    release_name = version.json().get("version") if version.status_code == 200 else None
    return Poll(models, version=release_name, native_endpoints=ollama_native_endpoints(release_name))


def mark_resident(models: dict[str, ModelView], ps: dict) -> None:
    """Ollama `/api/ps`: the models it lists are in memory, the others are not."""
    listed = {entry["name"]: entry for entry in ps.get("models", [])}
    for name, entry in listed.items():
        models.setdefault(name, ModelView(name=name, details=entry))
    for name, model in models.items():
        model.resident = name in listed
        model.vram_bytes = listed[name].get("size_vram") if name in listed else None


async def poll_ollama_residency(client: httpx.AsyncClient, url: str) -> dict:
    """Only `/api/ps` (after a request, which may have loaded one model and evicted another)."""
    ps = await client.get(f"{url}/api/ps")
    ps.raise_for_status()
    return ps.json()


# vLLM's routes and the capability each one shows (its FastAPI app includes a router only for the
# tasks its runner supports: vllm/entrypoints/openai/api_server.py, vllm/entrypoints/pooling/__init__.py).
VLLM_ROUTE_CAPABILITIES = {
    "/v1/chat/completions": "completion",
    "/v1/embeddings": "embedding",
    "/score": "score",
    "/rerank": "rerank",
    "/tokenize": "tokenize",
}


def capabilities_from_openapi(document: dict) -> tuple[str, ...]:
    """What a vLLM server can do, from the paths its OpenAPI document lists."""
    paths = document.get("paths") or {}
    return tuple(capability for route, capability in VLLM_ROUTE_CAPABILITIES.items() if route in paths)


def native_endpoints_from_openapi(document: dict) -> tuple[str, ...]:
    """The client APIs a vLLM server serves itself (it routes the Messages API only where it generates)."""
    paths = document.get("paths") or {}
    return tuple(endpoint for endpoint in NATIVE_ENDPOINTS if endpoint in paths)


def routes_served(document: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(document, dict):
        return (), ()
    return capabilities_from_openapi(document), native_endpoints_from_openapi(document)


async def poll_vllm(client: httpx.AsyncClient, url: str, shown: dict[tuple, tuple]) -> Poll:
    """`shown` caches what /openapi.json says (capabilities, native endpoints) by the set of served models."""
    health, listing, metrics = await asyncio.gather(
        client.get(f"{url}/health"), client.get(f"{url}/v1/models"), client.get(f"{url}/metrics"),
    )
    health.raise_for_status()
    listing.raise_for_status()
    models = {
        entry["id"]: ModelView(name=entry["id"], resident=True, details=entry, context_length=entry.get("max_model_len"))
        for entry in listing.json().get("data", [])
    }
    served = tuple(sorted(models))
    if served not in shown:
        document = await client.get(f"{url}/openapi.json")
        shown.clear()
        try:
            shown[served] = routes_served(document.json() if document.status_code == 200 else None)
        except ValueError:  # no OpenAPI document (served with --disable-fastapi-docs): the node does not say
            shown[served] = (), ()
    capabilities, native_endpoints = shown[served]
    for model in models.values():
        model.capabilities = capabilities
    load = parse_vllm_metrics(metrics.text) if metrics.status_code == 200 else EngineLoad()
    return Poll(models, load=load, native_endpoints=native_endpoints)


POLLERS = {"ollama": poll_ollama, "vllm": poll_vllm}


async def _timed(fetch: Coroutine[Any, Any, T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await fetch
    return result, time.monotonic() - started


class PollLoop:
    """An event loop of its own, on a thread of its own, for the backend polls.

    On the gateway's loop a poll waits its turn behind everything else the gateway does: when the
    gateway is busy enough that one turn of its loop outlasts the poll timeout, every backend's poll
    times out at once and all are taken out of rotation, though none is at fault. The polls need
    little CPU, and get it here even then. Only the fetching runs here: what a poll found is applied
    to the registry back on the gateway's loop.
    """

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mindrouter-polls", daemon=True)
        self.client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)  # used on this loop only
        self.thread.start()

    async def run(self, fetch: Coroutine[Any, Any, T]) -> T:
        """Run `fetch` on the poll loop; its result (or exception) back on the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fetch, self.loop))

    async def timed(self, fetch: Coroutine[Any, Any, T]) -> tuple[T, float]:
        """Run `fetch` on the poll loop: its result and how long it took there, the gateway's own lag aside."""
        return await self.run(_timed(fetch))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


async def poll_gpus(client: httpx.AsyncClient, telemetry_url: str, secret: str, indices: list[int]) -> list[GpuReading]:
    """The backend's GPUs as its node's telemetry agent reports them (all of them when no indices are set)."""
    answer = await client.get(f"{telemetry_url.rstrip('/')}/gpus", headers={"Authorization": f"Bearer {secret}"})
    answer.raise_for_status()
    readings = parse_report(answer.json())
    return select_gpus(readings, indices) if indices else readings
