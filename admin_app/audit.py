"""The audit log as admins search it: request rows, their bodies and the artifacts they carried.

Text search folds case the same way on SQLite and MariaDB: both compare `LOWER(text)` with the
lower-cased needle, byte for byte (`admin_app.db` gives SQLite a Unicode-aware LOWER; MariaDB's
case- and accent-insensitive collation is set aside with a binary one), so one query finds the
same rows on either.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import peewee
from peewee import JOIN, SQL, NodeList, fn

from admin_app.api_values import FieldError, iso_utc, parse_timestamp
from store.db import database
from store.models import ApiKey, Artifact, Backend, Request, RequestArtifact, RequestBody, User

FILTERS = ("user", "model", "backend", "status", "since", "until", "q", "page", "per_page")
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_QUERY_LENGTH = 500
_STATUS = re.compile(r"^([1-5])(\d\d|xx)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AuditSearch:
    conditions: tuple[peewee.Expression, ...]
    page: int
    per_page: int


def _bad_filter(name: str, message: str) -> FieldError:
    return FieldError(message, status=400, param=name, code="invalid_filter")


def _positive_int(args: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = args.get(name)
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise _bad_filter(name, f"{name} must be a whole number from 1 to {high}, not {raw!r}")
    return int(raw)


def _time(args: Mapping[str, str], name: str) -> dt.datetime | None:
    raw = args.get(name)
    if not raw:
        return None
    try:
        return parse_timestamp(raw)
    except ValueError:
        raise _bad_filter(
            name, f"{name} {raw!r} is not an ISO-8601 time (like 2025-03-01 or 2025-03-01T12:00:00Z)"
        ) from None


def _status_range(raw: str) -> tuple[int, int]:
    match = _STATUS.match(raw.lower())
    if not match:
        raise _bad_filter(
            "status", f"status must be an HTTP status like 200 or a class like 4xx, not {raw!r}"
        )
    if match.group(2) == "xx":
        low = int(match.group(1)) * 100
        return low, low + 99
    return int(raw), int(raw)


def contains_folded(column: peewee.Field, needle: str) -> peewee.Expression:
    """`column` holds `needle`, ignoring case, with LIKE's wildcards in `needle` taken literally."""
    lowered = fn.LOWER(column)
    if isinstance(database.obj, peewee.MySQLDatabase):
        lowered = NodeList((lowered, SQL("COLLATE utf8mb4_bin")))
    return lowered.contains(needle.lower())


def parse_search(args: Mapping[str, str]) -> AuditSearch:
    """The conditions of `GET /admin/audit/search`; a bad or unknown filter raises FieldError (400)."""
    unknown = sorted(set(args) - set(FILTERS))
    if unknown:
        raise _bad_filter(unknown[0], f"unknown filter {unknown[0]!r} (known: {', '.join(FILTERS)})")
    conditions = []
    if args.get("user"):
        user = User.get_or_none(User.username == args["user"])
        if user is None:
            raise _bad_filter("user", f"no user {args['user']!r} (GET /admin/users lists them)")
        conditions.append(Request.user == user.id)
    if args.get("model"):
        conditions.append(Request.model == args["model"])
    if args.get("backend"):
        backend = Backend.get_or_none(Backend.name == args["backend"])
        if backend is None:
            raise _bad_filter("backend", f"no backend {args['backend']!r} (GET /admin/backends lists them)")
        conditions.append(Request.backend == backend.id)
    if args.get("status"):
        low, high = _status_range(args["status"])
        conditions.append(Request.status.between(low, high))
    since, until = _time(args, "since"), _time(args, "until")
    if since is not None:
        conditions.append(Request.created_at >= since)
    if until is not None:
        conditions.append(Request.created_at < until)
    if since is not None and until is not None and since >= until:
        raise _bad_filter("until", f"until ({args['until']}) must be later than since ({args['since']})")
    text = args.get("q", "")
    if text:
        if len(text) > MAX_QUERY_LENGTH:
            raise _bad_filter("q", f"q is longer than {MAX_QUERY_LENGTH} characters")
        holding = RequestBody.select(RequestBody.request).where(
            contains_folded(RequestBody.prompt, text)
            | contains_folded(RequestBody.response, text)
            | contains_folded(RequestBody.response_text, text)
        )
        conditions.append(Request.id.in_(holding))
    return AuditSearch(
        tuple(conditions),
        page=_positive_int(args, "page", 1, 10**9),
        per_page=_positive_int(args, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
    )


def _requests_query() -> peewee.Select:
    """Request rows with user, backend and key joined, newest first."""
    return (
        Request.select(Request, User, Backend, ApiKey)
        .join(User, JOIN.LEFT_OUTER, on=(Request.user == User.id))
        .switch(Request)
        .join(Backend, JOIN.LEFT_OUTER, on=(Request.backend == Backend.id))
        .switch(Request)
        .join(ApiKey, JOIN.LEFT_OUTER, on=(Request.api_key == ApiKey.id))
        .order_by(Request.created_at.desc(), Request.id.desc())
    )


def _artifact_hashes(request_ids: list[int]) -> dict[int, list[str]]:
    hashes = defaultdict(list)
    if request_ids:
        links = (
            RequestArtifact.select(RequestArtifact.request, Artifact.sha256)
            .join(Artifact)
            .where(RequestArtifact.request.in_(request_ids))
            .order_by(RequestArtifact.id)
        )
        for link in links:
            hashes[link.request_id].append(link.artifact.sha256)
    return hashes


def _matching(query: peewee.Select, found: AuditSearch) -> peewee.Select:
    return query.where(*found.conditions) if found.conditions else query


def search(found: AuditSearch) -> dict:
    """One page of matching requests, newest first, with the total over all pages."""
    total = _matching(Request.select(Request.id), found).count()
    rows = list(_matching(_requests_query(), found).paginate(found.page, found.per_page))
    hashes = _artifact_hashes([row.id for row in rows])
    return {
        "total": total,
        "page": found.page,
        "per_page": found.per_page,
        "pages": -(-total // found.per_page),
        "results": [request_json(row, hashes[row.id]) for row in rows],
    }


def _related(row: Request, name: str):
    """The joined row behind a nullable foreign key, or None (no row, or a LEFT JOIN that found none)."""
    if getattr(row, f"{name}_id") is None:
        return None
    related = getattr(row, name)
    return related if related is not None and related.id is not None else None


def request_json(row: Request, artifact_hashes: list[str]) -> dict:
    user, backend, key = _related(row, "user"), _related(row, "backend"), _related(row, "api_key")
    tokens = [t for t in (row.prompt_tokens, row.completion_tokens) if t is not None]
    return {
        "request_id": row.request_id,
        "created_at": iso_utc(row.created_at),
        "user": user.username if user else None,
        "api_key": f"mr_{key.prefix}_…" if key else None,
        "endpoint": row.endpoint,
        "client_dialect": row.client_dialect,
        "backend_dialect": row.backend_dialect,
        "model": row.model,
        "backend": backend.name if backend else None,
        "status": row.status,
        "stream": row.stream,
        "queue_ms": row.queue_ms,
        "ttft_ms": row.ttft_ms,
        "total_ms": row.total_ms,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": sum(tokens) if tokens else None,
        "client_address": row.client_address,
        "error": row.error,
        "artifacts": artifact_hashes,
    }


def request_detail(request_id: str) -> dict | None:
    """The full audit row: bodies, validation result and artifacts; None if there is no such request."""
    row = _requests_query().where(Request.request_id == request_id).first()
    if row is None:
        return None
    body = RequestBody.get_or_none(RequestBody.request == row.id)
    artifacts = list(
        Artifact.select()
        .join(RequestArtifact)
        .where(RequestArtifact.request == row.id)
        .order_by(RequestArtifact.id)
    )
    detail = request_json(row, [a.sha256 for a in artifacts])
    detail.update(
        prompt=body.prompt if body else None,
        response=body.response if body else None,
        response_text=body.response_text if body else None,
        validation=_validation(body.validation) if body else None,
        artifacts=[
            {
                "sha256": a.sha256,
                "content_type": a.content_type,
                "size_bytes": a.size_bytes,
                "created_at": iso_utc(a.created_at),
                "download": f"/admin/artifacts/{a.sha256}",
            }
            for a in artifacts
        ],
    )
    return detail


def _validation(stored: str):
    if not stored:
        return None
    try:
        return json.loads(stored)
    except ValueError:
        return stored


def artifact_file(storage_root: str | Path, relative_path: str) -> Path | None:
    """Where an artifact's file is, or None when its stored path would lead outside the storage root
    (an absolute path, `..`, a symlink out): such a path is never read or deleted."""
    root = Path(storage_root).resolve()
    try:
        candidate = (root / relative_path).resolve()
    except (OSError, ValueError):
        return None
    return candidate if candidate != root and candidate.is_relative_to(root) else None
