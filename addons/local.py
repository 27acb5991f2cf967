"""Answers the paths the gateway serves itself: health, metrics and the model catalogs."""

from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import urlsplit

from mitmproxy import http
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from addons.context import context_of
from addons.polling import version_key
from addons.registry import BackendRegistry, model_aliases
from addons.replies import point_at_backend, reply, reply_error, reply_json
from translators import catalog
from translators.errors import OLLAMA, GatewayError
from translators.request_body import load_json_object

# What an Ollama client is told when no Ollama node reports its version.
FALLBACK_OLLAMA_VERSION = "0.0.0"


def catalog_entries(registry: BackendRegistry) -> list[catalog.CatalogEntry]:
    """One entry per model name across the backends that take requests; resident if resident anywhere."""
    entries: dict[str, catalog.CatalogEntry] = {}
    for view in registry.views.values():
        if not view.accepts_requests:
            continue
        for model in view.models.values():
            entry = entries.setdefault(model.name, catalog.CatalogEntry(
                name=model.name, engine=view.engine, size_bytes=model.size_bytes, details=model.details,
                context_length=model.context_length,
            ))
            if model.resident:
                entry.resident = True
                entry.vram_bytes = (entry.vram_bytes or 0) + (model.vram_bytes or 0)
    for alias, target in registry.aliases.items():  # an alias is listed as the model it names, under its own name
        named = next((entries[name] for name in model_aliases(target) if name in entries), None)
        if named is not None and alias not in entries:
            renamed = {key: alias for key in ("name", "model", "id", "root") if key in named.details}
            entries[alias] = dataclasses.replace(named, name=alias, details={**named.details, **renamed})
    return list(entries.values())


class Local:
    """Answers health, metrics and catalog paths from the registry, without touching a backend."""

    def __init__(self, registry: BackendRegistry) -> None:
        self.registry = registry
        self.answers = {
            "/healthz": self.answer_healthz,
            "/readyz": self.answer_readyz,
            "/metrics": self.answer_metrics,
            "/v1/models": self.answer_v1_models,
            "/api/tags": self.answer_api_tags,
            "/api/ps": self.answer_api_ps,
            "/api/version": self.answer_api_version,
            "/api/show": self.answer_api_show,
        }

    def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind not in ("catalog", "health"):
            return
        self.answers[context.route.endpoint](flow)

    def answer_healthz(self, flow: http.HTTPFlow) -> None:
        reply_json(flow, 200, {"status": "ok"})

    def answer_readyz(self, flow: http.HTTPFlow) -> None:
        healthy = [view.name for view in self.registry.views.values() if view.accepts_requests]
        ready = self.registry.database_ok and bool(healthy)
        reply_json(flow, 200 if ready else 503, {
            "status": "ready" if ready else "not ready",
            "database": "ok" if self.registry.database_ok else "unavailable",
            "healthy_backends": healthy,
        })

    def answer_metrics(self, flow: http.HTTPFlow) -> None:
        reply(flow, 200, generate_latest(), {"Content-Type": CONTENT_TYPE_LATEST})

    def answer_v1_models(self, flow: http.HTTPFlow) -> None:
        reply_json(flow, 200, catalog.openai_models(catalog_entries(self.registry), created=int(time.time())))

    def answer_api_tags(self, flow: http.HTTPFlow) -> None:
        reply_json(flow, 200, catalog.ollama_tags(catalog_entries(self.registry)))

    def answer_api_ps(self, flow: http.HTTPFlow) -> None:
        reply_json(flow, 200, catalog.ollama_ps(catalog_entries(self.registry)))

    def answer_api_version(self, flow: http.HTTPFlow) -> None:
        """The lowest Ollama version in the cluster: what an Ollama client may rely on."""
        versions = [view.version for view in self.registry.views.values() if view.engine == "ollama" and view.version]
        reply_json(flow, 200, {"version": min(versions, key=version_key, default=FALLBACK_OLLAMA_VERSION)})

    def answer_api_show(self, flow: http.HTTPFlow) -> None:
        """An Ollama node describes its own models best; other models get what their engine reported."""
        try:
            body = load_json_object(flow.request.raw_content or b"", 1 << 20)
        except GatewayError as error:
            reply_error(flow, OLLAMA, error)
            return
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            reply_error(flow, OLLAMA, GatewayError(422, "field 'model' is required"))
            return
        model = self.registry.resolve(model)
        serving = sorted(self.registry.serving(model), key=lambda view: view.engine != "ollama")
        if serving and serving[0].engine == "ollama":
            node = serving[0]
            point_at_backend(flow, node.url)
            # The node gets the question alone, in plain JSON: none of the caller's other fields, encodings
            # or headers, which a node may choke on (a 500 the caller could cause at will).
            question = {"model": model, "verbose": body.get("verbose") is True}
            flow.request.headers = http.Headers(host=urlsplit(node.url).netloc, content_type="application/json")
            flow.request.content = json.dumps(question).encode()
        elif serving:
            entry = next(e for e in catalog_entries(self.registry) if e.name == serving[0].served_name(model))
            reply_json(flow, 200, catalog.ollama_show(entry))
        else:
            reply_error(flow, OLLAMA, GatewayError(404, f"model '{model}' not found"))
