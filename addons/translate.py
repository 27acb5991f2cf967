"""Translate: parse the caller's body once, check it, and keep what later addons need on the context."""

from __future__ import annotations

import json

from mitmproxy import ctx, http

from addons.context import context_of
from addons.replies import reply_error
from translators.errors import OLLAMA, GatewayError

# Ollama streams unless told otherwise; OpenAI only when asked. Embeddings and show never stream.
STREAMS_BY_DEFAULT = {"/api/chat", "/api/generate"}
NEVER_STREAMS = {"/v1/embeddings", "/api/embed", "/api/embeddings", "/api/show"}


def parse_body(endpoint: str, raw: bytes, max_bytes: int) -> tuple[dict, str, bool]:
    """The JSON body, its model and whether the answer streams; GatewayError for what we must refuse."""
    if len(raw) > max_bytes:
        raise GatewayError(413, f"request body of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    model = body.get("model", body.get("name") if endpoint == "/api/show" else None)
    if not isinstance(model, str) or not model:
        raise GatewayError(422, "field 'model' is required and must be a non-empty string")
    stream = body.get("stream", endpoint in STREAMS_BY_DEFAULT)
    if not isinstance(stream, bool):
        raise GatewayError(422, "field 'stream' must be a boolean")
    return body, model, stream and endpoint not in NEVER_STREAMS


class Translate:
    def load(self, loader):
        loader.add_option(
            "max_request_body_mb", float, 32.0,
            "Largest request body accepted, in MiB (images count); larger bodies get 413.",
        )

    def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind != "inference":
            return
        try:
            body, model, stream = parse_body(
                context.route.endpoint, flow.request.raw_content or b"", int(ctx.options.max_request_body_mb * 2**20)
            )
        except GatewayError as error:
            reply_error(flow, context.dialect or OLLAMA, error)
            return
        context.body, context.model, context.stream = body, model, stream
