"""Audit retention: remove requests older than a cutoff, their bodies and artifact links, then every
artifact no request refers to any more, with its file, and the stored /v1/responses answers as old.

Work goes in batches of request ids, each batch its own transaction, so a prune of millions of
rows holds no long lock on the tables the gateway writes to and uses bounded memory on SQLite
and MariaDB alike. Files are deleted only after the rows that named them are committed away.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import peewee
from peewee import SQL, fn

from admin_app.audit import artifact_file
from store.db import database
from store.models import Artifact, Request, RequestArtifact, RequestBody, StoredResponse

DEFAULT_BATCH_SIZE = 500
_AGE = re.compile(r"^\s*(\d+)\s*([dh])\s*$")


def parse_age(text: str) -> dt.timedelta:
    """`365d` or `12h` as a timedelta; ValueError saying what is expected otherwise."""
    match = _AGE.match(text.lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(
            f"age {text!r} must be a whole number of days or hours of at least 1, like 365d or 48h"
        )
    amount = int(match.group(1))
    return dt.timedelta(days=amount) if match.group(2) == "d" else dt.timedelta(hours=amount)


@dataclass
class PruneCounts:
    requests: int = 0
    bodies: int = 0
    artifact_links: int = 0
    artifacts: int = 0
    files: int = 0
    missing_files: int = 0
    stored_responses: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _unreferenced() -> peewee.Expression:
    return ~fn.EXISTS(RequestArtifact.select(SQL("1")).where(RequestArtifact.artifact == Artifact.id))


def _delete_unreferenced(condition: peewee.Expression, limit: int | None = None) -> list[Artifact]:
    """Delete the artifacts matching `condition` that no request links to; returns those deleted.
    The DELETE repeats the check, so an artifact the gateway links again meanwhile is kept."""
    query = (
        Artifact.select(Artifact.id, Artifact.path).where(condition & _unreferenced()).order_by(Artifact.id)
    )
    candidates = list(query.limit(limit) if limit else query)
    if not candidates:
        return []
    ids = [a.id for a in candidates]
    Artifact.delete().where(Artifact.id.in_(ids) & _unreferenced()).execute()
    kept = {a.id for a in Artifact.select(Artifact.id).where(Artifact.id.in_(ids))}
    return [a for a in candidates if a.id not in kept]


def _remove_files(artifacts: list[Artifact], storage_root: str | Path, counts: PruneCounts) -> None:
    for artifact in artifacts:
        path = artifact_file(storage_root, artifact.path)
        if path is None:  # a path leading outside the storage root: never delete there
            counts.missing_files += 1
            continue
        try:
            path.unlink()
            counts.files += 1
        except FileNotFoundError:
            counts.missing_files += 1


def prune_audit(
    cutoff: dt.datetime, storage_root: str | Path, batch_size: int = DEFAULT_BATCH_SIZE
) -> PruneCounts:
    """Remove every request created before `cutoff` (naive UTC) with what hangs off it, then every
    artifact left unreferenced: those the removed requests used, and older ones nobody links to."""
    counts = PruneCounts()
    while True:
        # No ORDER BY: any batch of old rows will do, and the created_at index finds one without a sort.
        old = Request.select(Request.id).where(Request.created_at < cutoff).limit(batch_size)
        ids = [row.id for row in old]
        if not ids:
            break
        with database.atomic():
            used = [
                link.artifact_id
                for link in RequestArtifact.select(RequestArtifact.artifact)
                .where(RequestArtifact.request.in_(ids))
                .distinct()
            ]
            counts.artifact_links += (
                RequestArtifact.delete().where(RequestArtifact.request.in_(ids)).execute()
            )
            counts.bodies += RequestBody.delete().where(RequestBody.request.in_(ids)).execute()
            counts.requests += Request.delete().where(Request.id.in_(ids)).execute()
            orphans = _delete_unreferenced(Artifact.id.in_(used)) if used else []
        counts.artifacts += len(orphans)
        _remove_files(orphans, storage_root, counts)
    # Artifacts stored for requests whose rows never arrived, or orphaned by an earlier run. Only those
    # older than the cutoff: the gateway may store an artifact a moment before it writes the link.
    while True:
        with database.atomic():
            orphans = _delete_unreferenced(Artifact.created_at < cutoff, limit=batch_size)
        if not orphans:
            break
        counts.artifacts += len(orphans)
        _remove_files(orphans, storage_root, counts)
    while True:
        old_responses = [row.id for row in StoredResponse.select(StoredResponse.id)
                         .where(StoredResponse.created_at < cutoff).limit(batch_size)]
        if not old_responses:
            break
        counts.stored_responses += StoredResponse.delete().where(StoredResponse.id.in_(old_responses)).execute()
    return counts


def count_prunable(cutoff: dt.datetime) -> PruneCounts:
    """What `prune_audit(cutoff)` would remove (files not checked): for `--dry-run`."""
    old = Request.select(Request.id).where(Request.created_at < cutoff)
    newer_link = RequestArtifact.select(SQL("1")).where(
        (RequestArtifact.artifact == Artifact.id) & RequestArtifact.request.not_in(old)
    )
    old_link = RequestArtifact.select(SQL("1")).where(
        (RequestArtifact.artifact == Artifact.id) & RequestArtifact.request.in_(old)
    )
    return PruneCounts(
        requests=old.count(),
        bodies=RequestBody.select().where(RequestBody.request.in_(old)).count(),
        artifact_links=RequestArtifact.select().where(RequestArtifact.request.in_(old)).count(),
        artifacts=Artifact.select()
        .where(~fn.EXISTS(newer_link) & (fn.EXISTS(old_link) | (Artifact.created_at < cutoff)))
        .count(),
        stored_responses=StoredResponse.select().where(StoredResponse.created_at < cutoff).count(),
    )
