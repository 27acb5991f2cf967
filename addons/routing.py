"""Routing: decide what each path is before anything else looks at the request."""

from __future__ import annotations

import secrets

from mitmproxy import http

from addons.context import CONTEXT_KEY, RequestContext, Route, caller_address, context_of
from addons.replies import point_at, reply_error
from translators.errors import ANTHROPIC, OLLAMA, OPENAI, GatewayError

INFERENCE = "inference"
CATALOG = "catalog"
HEALTH = "health"
ADMIN = "admin"
UNSERVED = "unserved"  # under /v1 or /api, but not an endpoint we serve
STORED = "stored"  # a stored response, /v1/responses/{id} (addons/responses.py)
STORED_PREFIX = "/v1/responses/"

ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/v1/chat/completions"): Route(INFERENCE, OPENAI, "/v1/chat/completions"),
    ("POST", "/v1/completions"): Route(INFERENCE, OPENAI, "/v1/completions"),
    ("POST", "/v1/embeddings"): Route(INFERENCE, OPENAI, "/v1/embeddings"),
    ("POST", "/v1/responses"): Route(INFERENCE, OPENAI, "/v1/responses"),
    ("POST", "/v1/rerank"): Route(INFERENCE, OPENAI, "/v1/rerank"),
    ("POST", "/v1/score"): Route(INFERENCE, OPENAI, "/v1/score"),
    ("POST", "/v1/tokenize"): Route(INFERENCE, OPENAI, "/v1/tokenize"),
    ("POST", "/rerank"): Route(INFERENCE, OPENAI, "/rerank"),
    ("POST", "/score"): Route(INFERENCE, OPENAI, "/score"),
    ("POST", "/tokenize"): Route(INFERENCE, OPENAI, "/tokenize"),
    ("POST", "/v1/messages"): Route(INFERENCE, ANTHROPIC, "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"): Route(INFERENCE, ANTHROPIC, "/v1/messages/count_tokens"),
    ("GET", "/v1/models"): Route(CATALOG, OPENAI, "/v1/models"),
    ("POST", "/api/chat"): Route(INFERENCE, OLLAMA, "/api/chat"),
    ("POST", "/api/generate"): Route(INFERENCE, OLLAMA, "/api/generate"),
    ("POST", "/api/embed"): Route(INFERENCE, OLLAMA, "/api/embed"),
    ("POST", "/api/embeddings"): Route(INFERENCE, OLLAMA, "/api/embeddings"),
    ("POST", "/api/show"): Route(CATALOG, OLLAMA, "/api/show"),
    ("GET", "/api/tags"): Route(CATALOG, OLLAMA, "/api/tags"),
    ("GET", "/api/ps"): Route(CATALOG, OLLAMA, "/api/ps"),
    ("GET", "/api/version"): Route(CATALOG, OLLAMA, "/api/version"),
    ("GET", "/healthz"): Route(HEALTH, None, "/healthz", needs_key=False),
    ("GET", "/readyz"): Route(HEALTH, None, "/readyz", needs_key=False),
    ("GET", "/metrics"): Route(HEALTH, None, "/metrics", needs_key=False),
}

DIALECT_PREFIXES = {"/v1/messages/": ANTHROPIC, "/v1/": OPENAI, "/api/": OLLAMA}  # the longest prefix first
ADMIN_ROUTE = Route(ADMIN, None, needs_key=False)


GATEWAY_PATHS = {path for _, path in ROUTES}
# Larger header fields are refused at the edge: the admin app's server takes fields of up to 8190 bytes
# and would otherwise drop the connection (mitmproxy's bare 502).
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADER_BYTES = 32 * 2**10
UPGRADE_HEADERS = ("Upgrade", "HTTP2-Settings")


def route_for(method: str, path: str) -> Route:
    route = ROUTES.get((method, path)) or (ROUTES.get(("GET", path)) if method == "HEAD" else None)
    if route:
        return route
    if path.startswith(STORED_PREFIX) and "/" not in path.removeprefix(STORED_PREFIX) and method in ("GET", "DELETE"):
        return Route(STORED, OPENAI, STORED_PREFIX + "{id}")
    if path in GATEWAY_PATHS:  # ours, with another method: 405 in the path's dialect, never the admin app
        dialect = next(route.dialect for (_, known), route in ROUTES.items() if known == path)
        return Route(UNSERVED, dialect or OLLAMA, path)
    for prefix, dialect in DIALECT_PREFIXES.items():
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return Route(UNSERVED, dialect, path)
    return ADMIN_ROUTE


def oversized_headers(headers: http.Headers) -> GatewayError | None:
    sizes = [len(name) + len(value) + 4 for name, value in headers.fields]
    if max(sizes, default=0) > MAX_HEADER_FIELD_BYTES or sum(sizes) > MAX_HEADER_BYTES:
        return GatewayError(431, f"request headers too large: at most {MAX_HEADER_FIELD_BYTES} bytes a field and "
                                 f"{MAX_HEADER_BYTES} in all", code="headers_too_large")
    return None


def unserved_error(method: str, path: str) -> GatewayError:
    allowed = sorted(m for m, p in ROUTES if p == path)
    if allowed:
        return GatewayError(405, f"method {method} not allowed on {path} (use {', '.join(allowed)})",
                            headers={"Allow": ", ".join(allowed)})
    return GatewayError(404, f"unknown endpoint {path}")


class Routing:
    """Creates the request's context and sends dashboard and admin paths to the admin app."""

    def __init__(self, admin_app_url: str) -> None:
        self.admin_app_url = admin_app_url

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # No path here upgrades its connection (no WebSocket, no h2c): an upgrade asked for would only
        # keep mitmproxy from closing the connection after an error it answers itself. A caller's
        # `Connection: close` stays: mitmproxy closes the connection after the answer.
        for header in UPGRADE_HEADERS:
            flow.request.headers.pop(header, None)
        asks_close = "close" in flow.request.headers.get("Connection", "").lower()
        flow.request.headers.pop("Connection", None)
        if asks_close:
            flow.request.headers["Connection"] = "close"
        if error := oversized_headers(flow.request.headers):
            route = route_for(flow.request.method, flow.request.path.split("?", 1)[0])
            reply_error(flow, route.dialect, error)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.request.stream:  # answered at the edge, or its body went to the body sink
            return
        path = flow.request.path.split("?", 1)[0]
        route = route_for(flow.request.method, path)
        if route.kind == UNSERVED:
            reply_error(flow, route.dialect, unserved_error(flow.request.method, path))
            return
        flow.metadata[CONTEXT_KEY] = RequestContext(
            request_id=secrets.token_hex(12),
            route=route,
            client_address=caller_address(flow),
        )
        if route.kind == ADMIN:
            point_at(flow, self.admin_app_url)
            flow.request.headers["X-Forwarded-For"] = caller_address(flow)
            flow.request.headers["X-Forwarded-Proto"] = "http"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The admin app's pages and exports pass through as they come, never held whole in the gateway's
        memory."""
        context = context_of(flow)
        if context is not None and context.route.kind == ADMIN:
            flow.response.stream = True
