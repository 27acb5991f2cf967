"""Uploaded images and files, stored once by content under ARTIFACT_STORAGE_PATH."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import peewee

from store.models import Artifact

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}


def artifact_path(sha256: str, media_type: str) -> str:
    """Where an artifact lives, relative to the storage root: fanned out so no folder grows huge."""
    return f"{sha256[:2]}/{sha256}{EXTENSIONS.get(media_type, '.bin')}"


def store_artifact(root: Path, data: bytes, media_type: str) -> Artifact:
    """Write the file (atomically, once) and its row (once, whichever process gets there first)."""
    sha256 = hashlib.sha256(data).hexdigest()
    relative = artifact_path(sha256, media_type)
    target = root / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(target)
    try:
        with Artifact._meta.database.atomic():
            return Artifact.create(sha256=sha256, content_type=media_type, size_bytes=len(data), path=relative)
    except peewee.IntegrityError:
        return Artifact.get(Artifact.sha256 == sha256)
