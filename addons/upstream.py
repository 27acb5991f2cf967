"""Upstream: send a granted request to its backend in the engine's dialect and translate the answer back.

Streamed answers go through the response translator chunk by chunk as mitmproxy receives them
(a generator, so a chunk that yields nothing never ends the client's stream); whole answers are
translated once they have arrived. Engine errors reach the caller in the caller's dialect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from mitmproxy import http

from addons.context import RequestContext, context_of
from addons.metrics import REQUESTS
from addons.replies import point_at_backend
from translators.pipeline import build_backend_request, response_translator, translate_backend_error

log = logging.getLogger(__name__)

STREAMED_MEDIA_TYPES = ("text/event-stream", "application/x-ndjson")


def translate_stream(context: RequestContext):
    """The mitmproxy stream callable: engine bytes in, client bytes out; b"" marks the end."""
    translator = context.translator

    def convert(data: bytes) -> Iterator[bytes]:
        chunks = translator.feed(data) if data else translator.finish()
        if chunks and context.first_byte_at is None:
            context.first_byte_at = time.monotonic()
        context.delivered.extend(chunks)
        yield from chunks

    return convert


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

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.translator is None:
            return
        # The backend's keep-alive choice must not close the caller's connection.
        flow.response.headers.pop("Connection", None)
        media_type = flow.response.headers.get("Content-Type", "").split(";")[0].strip()
        if flow.response.status_code < 400 and media_type in STREAMED_MEDIA_TYPES:
            flow.response.headers["Content-Type"] = context.translator.media_type
            flow.response.headers.pop("Content-Length", None)
            flow.response.headers["Transfer-Encoding"] = "chunked"
            flow.response.stream = translate_stream(context)

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind == "admin":
            return
        if context.translator is not None and not flow.response.stream:
            self.translate_whole(flow, context)
        backend = context.backend.name if context.backend else ""
        REQUESTS.labels(context.route.endpoint, context.model or "", backend, str(flow.response.status_code)).inc()

    def translate_whole(self, flow: http.HTTPFlow, context: RequestContext) -> None:
        status, body = flow.response.status_code, flow.response.content or b""
        if status >= 400:
            status, translated = translate_backend_error(context.backend.engine, status, body, context.dialect)
        else:
            status, translated = context.translator.translate_body(status, body)
        context.first_byte_at = context.first_byte_at or time.monotonic()
        flow.response.status_code = status
        flow.response.headers.pop("Content-Encoding", None)
        flow.response.headers["Content-Type"] = "application/json"
        flow.response.content = translated

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.backend is None:
            return
        log.warning("request %s to %s failed: %s", context.request_id, context.backend.name, flow.error)
        REQUESTS.labels(context.route.endpoint, context.model or "", context.backend.name, "error").inc()
