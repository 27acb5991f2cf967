"""Record: one audit row per inference request, with its bodies and images, written off the event loop.

The prompt is kept as the caller sent it, except that inline images are replaced by a reference
to their artifact (`artifact:sha256:<hex>`), stored once by content; the response is kept as
delivered, assembled from the stream.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import Path

from mitmproxy import http

from addons import metrics
from addons.context import RequestContext, context_of
from addons.writer import StoreWriter
from store.artifacts import store_artifact
from store.models import ApiKey, Request, RequestArtifact, RequestBody

log = logging.getLogger(__name__)


def milliseconds(start: float, end: float | None) -> float | None:
    return round((end - start) * 1000, 3) if end is not None else None


def prompt_with_image_references(raw: str, images: list[tuple[str, bytes]]) -> str:
    """The caller's body with each inline image's base64 text replaced by its artifact reference."""
    for base64_text, data in images:
        raw = raw.replace(base64_text, f"artifact:sha256:{hashlib.sha256(data).hexdigest()}")
    return raw


def observe(context: RequestContext, finished: float) -> None:
    """The request's timings and tokens as Prometheus metrics."""
    model = context.model or ""
    if context.first_byte_at is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(context.first_byte_at - context.received_at)
    metrics.TOTAL_TIME.labels(model).observe(finished - context.received_at)
    if context.sent_at is not None:
        waited = context.granted_at - context.queued_at if context.granted_at and context.queued_at else 0.0
        metrics.OVERHEAD.observe(max(0.0, context.sent_at - context.received_at - waited))
    usage = context.translator.usage if context.translator else None
    if usage and context.principal:
        metrics.TOKENS.labels(model, context.principal.role, "prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(model, context.principal.role, "completion").inc(usage.completion_tokens)


class Record:
    def __init__(self, writer: StoreWriter, artifact_root: str) -> None:
        self.writer = writer
        self.artifact_root = Path(artifact_root)

    def response(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind != "inference":
            return
        response = flow.response
        delivered = b"".join(context.delivered) if response.stream else (response.content or b"")
        self.record(context, response.status_code, delivered, error="")

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is None or context.route.kind != "inference" or context.recorded:
            return
        status = flow.response.status_code if flow.response else None
        self.record(context, status, b"".join(context.delivered), error=str(flow.error))

    def record(self, context: RequestContext, status: int | None, delivered: bytes, error: str) -> None:
        if context.recorded:
            return
        context.recorded = True
        finished = time.monotonic()
        translator, canonical, principal, backend = context.translator, context.canonical, context.principal, context.backend
        usage = translator.usage if translator else None
        images = [(image.base64, image.data) for image in canonical.images if image.data] if canonical else []
        media_types = [image.media_type or "application/octet-stream" for image in canonical.images if image.data] \
            if canonical else []
        row = {
            "request_id": context.request_id,
            "user": principal.user_id if principal else None,
            "api_key": principal.key_id if principal else None,
            "endpoint": context.route.endpoint,
            "client_dialect": context.dialect,
            "backend_dialect": backend.engine if backend else None,
            "model": canonical.requested_model if canonical else None,
            "backend": backend.id if backend else None,
            "status": status,
            "stream": context.stream,
            "queue_ms": milliseconds(context.received_at, context.granted_at),
            "ttft_ms": milliseconds(context.received_at, context.first_byte_at),
            "total_ms": milliseconds(context.received_at, finished),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "client_address": context.client_address,
            "error": error or context.error,
            "created_at": dt.datetime.fromtimestamp(context.received_wall, dt.UTC).replace(tzinfo=None),
        }
        prompt = prompt_with_image_references(context.client_body.decode("utf-8", "replace"), images)
        response = delivered.decode("utf-8", "replace")
        answer_text = "\n".join(part for part in (translator.thinking_text, translator.output_text) if part) \
            if translator else ""
        validation = json.dumps(translator.validation) if translator and translator.validation else ""
        artifacts = [(data, media_type) for (_, data), media_type in zip(images, media_types)]
        self.writer.submit(lambda: self.write(row, prompt, response, answer_text, validation, artifacts))
        observe(context, finished)

    def write(self, row: dict, prompt: str, response: str, answer_text: str, validation: str,
              artifacts: list[tuple[bytes, str]]) -> None:
        """Runs on the writer thread."""
        request = Request.create(**row)
        RequestBody.create(request=request, prompt=prompt, response=response, response_text=answer_text,
                           validation=validation)
        for data, media_type in artifacts:
            artifact = store_artifact(self.artifact_root, data, media_type)
            RequestArtifact.get_or_create(request=request, artifact=artifact)
        if row["api_key"] is not None:
            ApiKey.update(request_count=ApiKey.request_count + 1, last_used_at=row["created_at"]).where(
                ApiKey.id == row["api_key"]
            ).execute()
