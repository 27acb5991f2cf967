"""Model listings in each dialect, built from what the backends report (pure).

A model served by an Ollama node keeps the node's own listing entry; a model served only by
vLLM gets an entry in the Ollama shape made from what vLLM says of it, and vice versa, so every
client sees every model whatever engine serves it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

OLLAMA_EPOCH = "1970-01-01T00:00:00Z"


@dataclass
class CatalogEntry:
    name: str
    engine: str  # the engine of the first backend listing it: ollama | vllm
    resident: bool = False
    size_bytes: int | None = None
    vram_bytes: int | None = None
    details: dict = field(default_factory=dict)  # the engine's own listing entry
    context_length: int | None = None


def openai_models(entries: list[CatalogEntry], created: int) -> dict:
    """`GET /v1/models` (OpenAI's list object; vLLM adds `max_model_len`)."""
    data = []
    for entry in sorted(entries, key=lambda e: e.name):
        item = {"id": entry.name, "object": "model", "created": entry.details.get("created", created),
                "owned_by": entry.details.get("owned_by", "mindrouter")}
        if entry.context_length:
            item["max_model_len"] = entry.context_length
        data.append(item)
    return {"object": "list", "data": data}


def ollama_tag(entry: CatalogEntry) -> dict:
    if entry.engine == "ollama" and "digest" in entry.details:
        return {key: entry.details[key] for key in ("name", "model", "modified_at", "size", "digest", "details")
                if key in entry.details}
    created = entry.details.get("created")
    modified = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else OLLAMA_EPOCH
    return {
        "name": entry.name,
        "model": entry.name,
        "modified_at": modified,
        "size": entry.size_bytes or 0,
        "digest": "",
        "details": {"format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""},
    }


def ollama_tags(entries: list[CatalogEntry]) -> dict:
    """`GET /api/tags`."""
    return {"models": [ollama_tag(entry) for entry in sorted(entries, key=lambda e: e.name)]}


def ollama_ps(entries: list[CatalogEntry]) -> dict:
    """`GET /api/ps`: the models resident somewhere in the cluster."""
    running = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.resident:
            continue
        tag = ollama_tag(entry)
        running.append({
            **tag,
            "size": entry.details.get("size", tag.get("size", 0)),
            "size_vram": entry.vram_bytes or 0,
            "expires_at": entry.details.get("expires_at", OLLAMA_EPOCH),
        })
    return {"models": running}


def ollama_show(entry: CatalogEntry) -> dict:
    """`POST /api/show` for a model no Ollama node serves: what its engine says of it, in Ollama's shape."""
    tag = ollama_tag(entry)
    capabilities = entry.details.get("capabilities") or ["completion"]
    model_info = {"general.architecture": tag["details"]["family"] or entry.engine}
    if entry.context_length:
        model_info["general.context_length"] = entry.context_length
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": tag["details"],
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": tag["modified_at"],
    }
