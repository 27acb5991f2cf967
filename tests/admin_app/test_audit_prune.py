"""`flask --app admin_app audit prune --older-than AGE`: old requests go with their bodies and links,
and so does every artifact no remaining request uses, file included; newer ones stay untouched."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from admin_app.retention import parse_age
from store.models import AdminAction, Artifact, Request, RequestArtifact, RequestBody, utcnow

OLD = utcnow() - dt.timedelta(days=400)
RECENT = utcnow() - dt.timedelta(days=10)


@pytest.fixture
def storage(app) -> Path:
    return Path(app.config["ARTIFACT_STORAGE_PATH"])


@pytest.fixture
def artifact(storage):
    def artifact(name: str, created_at: dt.datetime = OLD) -> Artifact:
        sha256 = hashlib.sha256(name.encode()).hexdigest()
        path = storage / sha256[:2] / sha256
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        return Artifact.create(
            sha256=sha256,
            content_type="image/png",
            size_bytes=len(name),
            path=f"{sha256[:2]}/{sha256}",
            created_at=created_at,
        )

    return artifact


@pytest.fixture
def request_row(app):
    def request_row(request_id: str, at: dt.datetime, artifacts=()) -> Request:
        row = Request.create(
            request_id=request_id, endpoint="/api/chat", client_dialect="ollama", created_at=at
        )
        RequestBody.create(request=row, prompt=f"prompt of {request_id}", response="answer")
        for used in artifacts:
            RequestArtifact.create(request=row, artifact=used)
        return row

    return request_row


def file_of(storage: Path, row: Artifact) -> Path:
    return storage / row.path


def test_prune_removes_old_requests_and_the_artifacts_only_they_used(cli, storage, artifact, request_row):
    only_old = artifact("only-old")
    shared = artifact("shared")
    only_new = artifact("only-new", created_at=RECENT)
    stray_old = artifact("stray-old")  # stored, never linked (a request whose row never came)
    stray_new = artifact("stray-new", created_at=utcnow())  # the gateway may link it any moment
    request_row("old-1", OLD, [only_old, shared])
    request_row("old-2", OLD, [only_old])
    request_row("new-1", RECENT, [shared, only_new])
    request_row("new-2", utcnow())

    result = cli.invoke(args=["audit", "prune", "--older-than", "365d"])
    assert result.exit_code == 0, result.output
    assert "removed 2 requests, 2 bodies, 3 artifact links and 2 artifacts (2 files" in result.output

    assert sorted(r.request_id for r in Request.select()) == ["new-1", "new-2"]
    assert RequestBody.select().count() == 2 and RequestArtifact.select().count() == 2
    kept = {a.sha256 for a in Artifact.select()}
    assert kept == {shared.sha256, only_new.sha256, stray_new.sha256}
    for row in (shared, only_new, stray_new):
        assert file_of(storage, row).is_file()
    for row in (only_old, stray_old):
        assert not file_of(storage, row).exists()


def test_prune_works_in_batches(cli, artifact, request_row):
    images = [artifact(f"image-{n}") for n in range(5)]
    for n in range(7):
        request_row(f"old-{n}", OLD + dt.timedelta(minutes=n), [images[n % 5]])
    request_row("new", RECENT, [images[0]])

    result = cli.invoke(args=["audit", "prune", "--older-than", "30d", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert [r.request_id for r in Request.select()] == ["new"]
    assert [a.sha256 for a in Artifact.select()] == [images[0].sha256]
    assert "removed 7 requests, 7 bodies, 7 artifact links and 4 artifacts" in result.output


def test_prune_records_an_admin_action_without_actor(cli, request_row):
    request_row("old", OLD)
    cli.invoke(args=["audit", "prune", "--older-than", "8760h"])
    action = AdminAction.get(AdminAction.action == "audit.prune")
    assert action.actor_id is None
    assert json.loads(action.before)["older_than"] == "8760h"
    assert json.loads(action.after)["requests"] == 1


def test_prune_never_deletes_a_file_outside_the_storage_directory(cli, app, tmp_path, request_row):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    evil = Artifact.create(
        sha256="f" * 64, content_type="text/plain", size_bytes=7, path="../precious.txt", created_at=OLD
    )
    request_row("old", OLD, [evil])
    assert cli.invoke(args=["audit", "prune", "--older-than", "1d"]).exit_code == 0
    assert outside.read_text() == "keep me"
    assert Artifact.select().count() == 0


def test_dry_run_counts_and_removes_nothing(cli, artifact, request_row):
    request_row("old", OLD, [artifact("a"), artifact("b")])
    request_row("new", RECENT)
    result = cli.invoke(args=["audit", "prune", "--older-than", "365d", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove 1 requests, 1 bodies, 2 artifact links and 2 artifacts" in result.output
    assert Request.select().count() == 2 and Artifact.select().count() == 2


def test_prune_refuses_an_age_it_cannot_read(cli, request_row):
    request_row("old", OLD)
    for age in ("365", "0d", "1w", "-3d", "d"):
        result = cli.invoke(args=["audit", "prune", "--older-than", age])
        assert result.exit_code != 0, age
        assert "365d" in result.output, result.output  # says what it expects
    assert Request.select().count() == 1


def test_ages_are_days_or_hours():
    assert parse_age("365d") == dt.timedelta(days=365)
    assert parse_age("12h") == dt.timedelta(hours=12)
    assert parse_age(" 2D ") == dt.timedelta(days=2)
