"""Responses the gateway makes itself, always in the caller's dialect."""

from __future__ import annotations

import json

from mitmproxy import http

from translators.errors import OLLAMA, GatewayError, error_body


def reply_json(flow: http.HTTPFlow, status: int, payload, headers: dict[str, str] | None = None) -> None:
    flow.response = http.Response.make(
        status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def reply_error(flow: http.HTTPFlow, dialect: str | None, error: GatewayError) -> None:
    """Answer with `error` in the dialect of the path (Ollama's plain shape for non-API paths)."""
    flow.response = http.Response.make(
        error.status,
        error_body(dialect or OLLAMA, error),
        {"Content-Type": "application/json", **error.headers},
    )
