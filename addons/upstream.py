"""Upstream: send a granted request to its backend, in the engine's dialect."""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.context import context_of
from addons.metrics import REQUESTS
from addons.replies import point_at_backend
from translators.pipeline import build_backend_request, response_translator

log = logging.getLogger(__name__)


class Upstream:
    def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.backend is None:
            return
        backend, canonical = context.backend, context.canonical
        canonical.model = backend.served_name(context.model) or canonical.model
        path, payload = build_backend_request(canonical, backend.engine, context.request_id)
        point_at_backend(flow, backend.url)
        flow.request.path = path
        flow.request.content = payload
        flow.request.headers["Content-Type"] = "application/json"
        # The gateway reads and rewrites every answer: compressed bodies would only cost CPU twice.
        flow.request.headers["Accept-Encoding"] = "identity"
        context.translator = response_translator(canonical, backend.engine, context.request_id, int(time.time()))
        log.debug("request %s → %s %s", context.request_id, backend.name, path)

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
