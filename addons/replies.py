"""What the gateway does to a flow itself: answer it in the caller's dialect, or point it elsewhere."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from mitmproxy import http

from translators.errors import OLLAMA, GatewayError, error_body


def reply(flow: http.HTTPFlow, status: int, body: bytes, headers: dict[str, str]) -> None:
    """The gateway's own answer. A HEAD request gets the head alone: a body after it would be read
    by the client as the start of its next answer on the connection."""
    flow.response = http.Response.make(status, b"" if flow.request.method == "HEAD" else body, headers)


def reply_json(flow: http.HTTPFlow, status: int, payload, headers: dict[str, str] | None = None) -> None:
    reply(flow, status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def reply_error(flow: http.HTTPFlow, dialect: str | None, error: GatewayError) -> None:
    """Answer with `error` in the dialect of the path (Ollama's plain shape for non-API paths)."""
    reply(flow, error.status, error_body(dialect or OLLAMA, error), {"Content-Type": "application/json", **error.headers})


# The caller's credentials are for the gateway; a backend never sees them.
CALLER_ONLY_HEADERS = ("Authorization", "X-API-Key")


def point_at(flow: http.HTTPFlow, base_url: str) -> None:
    """Send the request to `base_url`'s scheme, host and port (the Host header follows)."""
    target = urlsplit(base_url)
    flow.request.scheme = target.scheme or "http"
    flow.request.host = target.hostname or "127.0.0.1"
    flow.request.port = target.port or (443 if flow.request.scheme == "https" else 80)


def point_at_backend(flow: http.HTTPFlow, base_url: str) -> None:
    point_at(flow, base_url)
    for header in CALLER_ONLY_HEADERS:
        flow.request.headers.pop(header, None)
