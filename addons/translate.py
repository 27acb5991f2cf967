"""Translate: the caller's dialect in, the caller's dialect out.

On the way in, the caller's body is parsed once into the canonical request every later addon
reads (bad input is answered here, before queueing). On the way out, streamed answers go through
the response translator piece by piece as mitmproxy receives them; whole answers and engine errors
are translated once they have arrived. This addon sits before Policy, Gate and Record, so its `response` hook
has set the usage before theirs settle quotas, release slots and write the audit row.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx, http

from addons.context import RequestContext, context_of
from addons.images import check_image_url_count
from addons.replies import reply_error
from translators.errors import GatewayError, error_body
from translators.pipeline import parse_client_request, stream_error_event, translate_backend_error

log = logging.getLogger(__name__)

STREAMED_MEDIA_TYPES = ("text/event-stream", "application/x-ndjson")
# Bodies above this are parsed (JSON, base64 images) in a worker thread, off the event loop.
PARSE_OFF_LOOP_BYTES = 256 * 2**10


def stream_translator(context: RequestContext):
    """The mitmproxy stream callable: engine bytes in, client bytes out; b"" marks the end. What one read
    of the engine's stream makes goes to the caller in one write.

    Should the translator ever fail, the caller's stream ends with an error event in its dialect,
    and the rest of the engine's stream is dropped: an exception here would break mitmproxy's
    connection to the caller with no word of why.
    """
    translator = context.translator
    broken = False

    def convert(data: bytes) -> list[bytes]:
        nonlocal broken
        if broken:
            return []
        try:
            chunks = translator.feed(data) if data else translator.finish()
        except Exception:
            log.exception("request %s: stream translation failed", context.request_id)
            broken, context.error = True, "the gateway could not translate the engine's stream"
            chunks = [stream_error_event(context.dialect, context.error)]
        if not chunks:
            return []  # never b"": mitmproxy would send it as the chunk that ends the caller's stream
        if context.first_byte_at is None:
            context.first_byte_at = time.monotonic()
        out = b"".join(chunks)  # one chunk is passed on as it is, not copied
        context.delivered.append(out)
        return [out]

    return convert


class Translate:
    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind != "inference":
            return
        context.client_body = flow.request.raw_content or b""
        parse_args = (context.route.endpoint, context.client_body, int(ctx.options.max_request_body_mb * 2**20),
                      flow.request.headers.get("anthropic-version"))
        try:
            if len(context.client_body) > PARSE_OFF_LOOP_BYTES:
                canonical = await asyncio.to_thread(parse_client_request, *parse_args)
            else:
                canonical = parse_client_request(*parse_args)
            # Image URLs are fetched by ImageFetch once Policy has admitted the request; only their count here.
            check_image_url_count(canonical.image_urls_to_fetch())
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        context.canonical = canonical
        context.model, context.stream = canonical.model, canonical.stream

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
            flow.response.stream = stream_translator(context)

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.translator is None or flow.response.stream:
            return
        status, body = flow.response.status_code, flow.response.content or b""
        try:
            if status >= 400:
                status, translated = translate_backend_error(context.backend.engine, status, body, context.dialect)
            else:
                status, translated = context.translator.translate_body(status, body)
        except Exception:  # never hand the caller the engine's own dialect
            log.exception("request %s: answer translation failed", context.request_id)
            context.error = "the gateway could not translate the engine's answer"
            status, translated = 502, error_body(context.dialect, GatewayError(502, context.error))
        context.first_byte_at = context.first_byte_at or time.monotonic()
        flow.response.status_code = status
        flow.response.headers.pop("Content-Encoding", None)
        flow.response.headers["Content-Type"] = "application/json"
        flow.response.content = translated
