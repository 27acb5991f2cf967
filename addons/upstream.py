"""Upstream: point a granted request at its backend and pass the answer back chunk by chunk."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from mitmproxy import http

from addons.context import context_of
from addons.metrics import REQUESTS

log = logging.getLogger(__name__)

STREAMED_MEDIA_TYPES = ("text/event-stream", "application/x-ndjson")
# The caller's credentials are for the gateway; a backend never sees them.
CALLER_ONLY_HEADERS = ("Authorization", "X-API-Key")


class Upstream:
    def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.backend is None:
            return
        target = urlsplit(context.backend.url)
        flow.request.scheme = target.scheme
        flow.request.host = target.hostname
        flow.request.port = target.port or (443 if target.scheme == "https" else 80)
        for header in CALLER_ONLY_HEADERS:
            flow.request.headers.pop(header, None)
        log.debug("request %s → %s %s", context.request_id, context.backend.name, flow.request.path)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.backend is None:
            return
        context.first_byte_at = time.monotonic()
        # The backend's keep-alive choice must not close the caller's connection.
        flow.response.headers.pop("Connection", None)
        media_type = flow.response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in STREAMED_MEDIA_TYPES:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind == "admin":
            return
        backend = context.backend.name if context.backend else ""
        REQUESTS.labels(context.route.endpoint, context.model or "", backend, str(flow.response.status_code)).inc()

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.backend is None:
            return
        log.warning("request %s to %s failed: %s", context.request_id, context.backend.name, flow.error)
        REQUESTS.labels(context.route.endpoint, context.model or "", context.backend.name, "error").inc()
