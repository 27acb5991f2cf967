"""Backends as the admin app shows them, and the rules a registration must follow."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from urllib.parse import urlsplit

from store.models import ENGINES, Backend, BackendModel

REGISTRATION_FIELDS = (
    "name", "url", "engine", "max_concurrent", "gpu_memory_gb", "priority", "telemetry_url", "gpu_indices",
)
REQUIRED_FIELDS = ("name", "url", "engine")
MAX_CONCURRENT_LIMIT = 10_000
PRIORITY_LIMIT = 1_000_000


class RegistrationError(ValueError):
    """`status` is 400 for a body that is not a registration at all, 422 for a field with a bad value."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def backends_with_models() -> list[tuple[Backend, list[BackendModel]]]:
    """Every backend in id order with its models, resident ones first: two queries, not one per backend."""
    models = defaultdict(list)
    query = BackendModel.select().order_by(BackendModel.resident.desc(), BackendModel.name)
    for model in query:
        models[model.backend_id].append(model)
    return [(backend, models[backend.id]) for backend in Backend.select().order_by(Backend.id)]


def _timestamp(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def backend_state(backend: Backend) -> dict:
    """The admin-settable and observed state of a backend, without its models (also the audit shape)."""
    return {
        "id": backend.id,
        "name": backend.name,
        "url": backend.url,
        "engine": backend.engine,
        "max_concurrent": backend.max_concurrent,
        "gpu_memory_gb": backend.gpu_memory_gb,
        "priority": backend.priority,
        "enabled": backend.enabled,
        "draining": backend.draining,
        "health": backend.health,
        "latency_ema_ms": backend.latency_ema_ms,
        "last_checked_at": _timestamp(backend.last_checked_at),
        "last_error": backend.last_error,
        "created_at": _timestamp(backend.created_at),
        "telemetry_url": backend.telemetry_url,
        "gpu_indices": [int(i) for i in backend.gpu_indices.split(",") if i],
        "refresh_requested_at": _timestamp(backend.refresh_requested_at),
    }


def backend_json(backend: Backend, models: list[BackendModel]) -> dict:
    return {
        **backend_state(backend),
        "models": [
            {
                "name": model.name,
                "resident": model.resident,
                "size_bytes": model.size_bytes,
                "vram_bytes": model.vram_bytes,
                "capabilities": json.loads(model.capabilities or "[]"),
                "context_length": model.context_length,
                "updated_at": _timestamp(model.updated_at),
            }
            for model in models
        ],
    }


def validate_registration(body) -> dict:
    """The fields of a `POST /admin/backends/register` body, checked and normalised, ready for `Backend`."""
    if not isinstance(body, dict):
        raise RegistrationError("request body must be a JSON object", status=400)
    unknown = sorted(set(body) - set(REGISTRATION_FIELDS))
    if unknown:
        raise RegistrationError(
            f"unknown field {unknown[0]!r} (known: {', '.join(REGISTRATION_FIELDS)})", param=unknown[0]
        )
    missing = [field for field in REQUIRED_FIELDS if body.get(field) in (None, "")]
    if missing:
        raise RegistrationError(f"missing required field {missing[0]!r}", status=400, param=missing[0])
    fields = {
        "name": _name(body["name"]),
        "url": _url(body["url"]),
        "engine": _engine(body["engine"]),
    }
    if body.get("max_concurrent") is not None:
        fields["max_concurrent"] = _int("max_concurrent", body["max_concurrent"], 1, MAX_CONCURRENT_LIMIT)
    if body.get("gpu_memory_gb") is not None:
        fields["gpu_memory_gb"] = _non_negative_number("gpu_memory_gb", body["gpu_memory_gb"])
    if body.get("priority") is not None:
        fields["priority"] = _int("priority", body["priority"], -PRIORITY_LIMIT, PRIORITY_LIMIT)
    if body.get("telemetry_url") is not None:
        fields["telemetry_url"] = _url(body["telemetry_url"], "telemetry_url")
    if body.get("gpu_indices") is not None:
        fields["gpu_indices"] = _gpu_indices(body["gpu_indices"])
    return fields


def _gpu_indices(value) -> str:
    """A list of GPU indices on the backend's node, stored as "0,1"."""
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 64 for i in value):
        raise RegistrationError("'gpu_indices' must be a list of GPU indices like [0, 1]", param="gpu_indices")
    return ",".join(str(index) for index in sorted(set(value)))


def _name(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistrationError("'name' must be a non-empty string", param="name")
    name = value.strip()
    if len(name) > Backend.name.max_length:
        raise RegistrationError(f"'name' is longer than {Backend.name.max_length} characters", param="name")
    return name


def _url(value, field: str = "url") -> str:
    if not isinstance(value, str):
        raise RegistrationError(f"{field!r} must be a string like http://host:11434", param=field)
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    except ValueError:
        raise RegistrationError(f"{field!r} {value!r} is not a valid URL", param=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistrationError(
            f"{field!r} {value!r} must be http:// or https:// with a host, like http://gpu1:11434", param=field
        )
    if parts.query or parts.fragment:
        raise RegistrationError(f"{field!r} {value!r} must not have a query or fragment", param=field)
    if len(url) > Backend.url.max_length:
        raise RegistrationError(f"{field!r} is longer than {Backend.url.max_length} characters", param=field)
    return url


def _engine(value) -> str:
    if value not in ENGINES:
        raise RegistrationError(
            f"'engine' must be one of {', '.join(ENGINES)}, not {value!r}", param="engine"
        )
    return value


def _int(field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RegistrationError(f"{field!r} must be an integer, not {value!r}", param=field)
    if not low <= value <= high:
        raise RegistrationError(f"{field!r} must be from {low} to {high}, not {value!r}", param=field)
    return value


def _non_negative_number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise RegistrationError(f"{field!r} must be a number of at least 0, not {value!r}", param=field)
    return float(value)
