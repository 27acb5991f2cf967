"""Record: one audit row per inference request, with its bodies and images, written off the event loop.

The prompt is kept as the caller sent it, except that inline images are replaced by a reference
to their artifact (`artifact:sha256:<hex>`), stored once by content; the response is kept as
delivered, assembled from the stream. A text past BODY_TEXT_LIMIT (a 30 MiB prompt would be an
INSERT beyond MariaDB's 16 MiB max_allowed_packet) is stored whole as a text artifact, and the
row keeps its head, searchable, and the reference. The hook only hands the raw bytes to the
writer: decoding, the image references and the artifacts are the writer thread's work.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import peewee
from mitmproxy import http

from addons import metrics
from addons.context import RequestContext, context_of
from addons.writer import StoreWriter, Write, writes, writes_together
from store.artifacts import store_artifact
from store.db import database, insert_rows
from store.models import ApiKey, Request, RequestArtifact, RequestBody, UsageHour, UsageMinute

log = logging.getLogger(__name__)


def milliseconds(start: float, end: float | None) -> float | None:
    return round((end - start) * 1000, 3) if end is not None else None


# Prompt and response texts above this many bytes go to artifact storage; the row keeps the first
# BODY_HEAD_CHARS characters. Three such fields, escaped, stay well under max_allowed_packet (16 MiB).
BODY_TEXT_LIMIT = 1 * 2**20
BODY_HEAD_CHARS = 256 * 2**10
SHORT_TEXT_LIMIT = 60_000  # bytes: error and validation are TEXT columns (64 KiB on MariaDB)
TEXT_MEDIA_TYPE = "text/plain"


def prompt_with_image_references(raw: str, images: list[tuple[str, bytes]]) -> str:
    """The caller's body with each inline image's base64 text replaced by its artifact reference."""
    for base64_text, data in images:
        raw = raw.replace(base64_text, f"artifact:sha256:{hashlib.sha256(data).hexdigest()}")
    return raw


def fit_text(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    encoded = text.encode()
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


def bounded_body(text: str, artifact_root: Path) -> tuple[str, bytes | None]:
    """The text to keep in the row and, when it is too large for one, the whole text to store as an
    artifact: the row then holds its head and where the rest is."""
    encoded = text.encode()
    if len(encoded) <= BODY_TEXT_LIMIT:
        return text, None
    reference = f"artifact:sha256:{hashlib.sha256(encoded).hexdigest()}"
    head = fit_text(text[:BODY_HEAD_CHARS], BODY_TEXT_LIMIT)
    return f"{head}\n[truncated: {len(encoded)} bytes in all, the whole text is {reference}]", encoded


def observe(context: RequestContext, finished: float) -> None:
    """The request's timings and tokens as Prometheus metrics."""
    model = context.model_label  # a served model or "unknown": never the caller's own string
    if context.first_byte_at is not None:
        metrics.series(metrics.TIME_TO_FIRST_TOKEN, model).observe(context.first_byte_at - context.received_at)
    metrics.series(metrics.TOTAL_TIME, model).observe(finished - context.received_at)
    if context.sent_at is not None:
        waited = context.granted_at - context.queued_at if context.granted_at and context.queued_at else 0.0
        metrics.OVERHEAD.observe(max(0.0, context.sent_at - context.received_at - waited))
    usage = context.translator.usage if context.translator else None
    if usage and context.principal:
        metrics.series(metrics.TOKENS, model, context.principal.role, "prompt").inc(usage.prompt_tokens)
        metrics.series(metrics.TOKENS, model, context.principal.role, "completion").inc(usage.completion_tokens)


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
        images = [image.data for image in canonical.images if image.data] if canonical else []
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
        answer_text = "\n".join(part for part in (translator.thinking_text, translator.output_text) if part) \
            if translator else ""
        validation = json.dumps(translator.validation) if translator and translator.validation else ""
        body = context.client_body
        self.writer.submit(Write("audit", {
            "row": row, "body": body, "delivered": delivered, "images": images,
            "media_types": media_types, "answer_text": answer_text, "validation": validation,
            "artifact_root": str(self.artifact_root),
        }, size=len(body) + len(delivered) + sum(len(data) for data in images) + len(answer_text)))
        observe(context, finished)

    def write(self, data: dict) -> None:
        write_audit(data)


def add_usage(rows: list[dict]) -> None:
    """Count finished requests into the rollups the dashboards read (UsageHour, UsageMinute), in the
    writer's transaction: one upsert per hour (and minute) row they touch, adding to it, made if missing."""
    hours: dict[tuple, Counter] = defaultdict(Counter)
    minutes: dict[dt.datetime, Counter] = defaultdict(Counter)
    for row in rows:
        at: dt.datetime = row["created_at"]
        sums = Counter(requests=1, errors=1 if row["status"] is None or row["status"] >= 400 else 0,
                       prompt_tokens=row["prompt_tokens"] or 0, completion_tokens=row["completion_tokens"] or 0)
        minutes[at.replace(second=0, microsecond=0)].update(sums)
        sums.update(queue_ms=row["queue_ms"] or 0.0, total_ms=row["total_ms"] or 0.0)
        hours[(row["user"] or 0, (row["model"] or "")[:255], at.replace(minute=0, second=0, microsecond=0))].update(sums)
    upserts = [(UsageHour, dict(zip(("user_id", "model", "hour"), key)), sums) for key, sums in hours.items()]
    upserts += [(UsageMinute, {"minute": minute}, sums) for minute, sums in minutes.items()]
    mysql = isinstance(database.obj, peewee.MySQLDatabase)
    for model, key, sums in upserts:
        sums = {name: sums[name] for name in USAGE_SUMS[model]}
        update = {getattr(model, name): getattr(model, name) + amount for name, amount in sums.items()}
        query = model.insert(**key, **sums)
        # MariaDB's ON DUPLICATE KEY UPDATE takes no conflict target; SQLite's ON CONFLICT needs one.
        (query.on_conflict(update=update) if mysql
         else query.on_conflict(conflict_target=[getattr(model, name) for name in key], update=update)).execute()


USAGE_SUMS = {
    UsageHour: ("requests", "errors", "prompt_tokens", "completion_tokens", "queue_ms", "total_ms"),
    UsageMinute: ("requests", "errors", "prompt_tokens", "completion_tokens"),
}


@writes("audit")
def write_audit(data: dict) -> None:
    """One request's audit (a spill file's replay, or a batch that failed as a whole, write by write)."""
    write_audits([data])


@writes_together("audit")
def write_audits(batch: list[dict]) -> None:
    """The audit rows, bodies and artifacts of a run of finished requests, from what Record.record handed
    over (on the writer thread): one multi-row INSERT per table and one update per API key, not five
    statements and two model objects per request."""
    audits = [Audit.of(data) for data in batch]
    insert_rows(Request, [audit.row for audit in audits])
    ids = dict(Request.select(Request.request_id, Request.id)
               .where(Request.request_id.in_([audit.row["request_id"] for audit in audits])).tuples())
    insert_rows(RequestBody, [
        {"request": ids[audit.row["request_id"]], "prompt": audit.prompt, "response": audit.response,
         "response_text": audit.answer_text, "validation": audit.validation}
        for audit in audits
    ])
    for audit in audits:
        for content, media_type in audit.artifacts:
            artifact = store_artifact(audit.root, content, media_type)
            RequestArtifact.get_or_create(request=ids[audit.row["request_id"]], artifact=artifact)
    add_usage([audit.row for audit in audits])
    used: dict[int, list[dt.datetime]] = defaultdict(list)
    for audit in audits:
        if audit.row["api_key"] is not None:
            used[audit.row["api_key"]].append(audit.row["created_at"])
    for key_id, times in used.items():
        ApiKey.update(request_count=ApiKey.request_count + len(times), last_used_at=max(times)).where(
            ApiKey.id == key_id
        ).execute()


@dataclass
class Audit:
    """One request's audit as the tables take it: texts bounded (the whole kept as an artifact), images
    referenced from the prompt."""

    root: Path
    row: dict
    prompt: str
    response: str
    answer_text: str
    validation: str
    artifacts: list[tuple[bytes, str]]

    @classmethod
    def of(cls, data: dict) -> Audit:
        root = Path(data["artifact_root"])
        images = [(base64.b64encode(image).decode("ascii"), image) for image in data["images"]]
        prompt = prompt_with_image_references(data["body"].decode("utf-8", "replace"), images)
        texts = [bounded_body(text, root) for text in (prompt, data["delivered"].decode("utf-8", "replace"),
                                                       data["answer_text"])]
        artifacts = [(image, media_type) for (_, image), media_type in zip(images, data["media_types"])]
        artifacts += [(whole, TEXT_MEDIA_TYPE) for _, whole in texts if whole is not None]
        (prompt, _), (response, _), (answer_text, _) = texts
        return cls(root, {**data["row"], "error": fit_text(data["row"]["error"], SHORT_TEXT_LIMIT)}, prompt, response,
                   answer_text, fit_text(data["validation"], SHORT_TEXT_LIMIT), artifacts)
