"""The admin API for the audit log (JSON): search requests, read one in full, download its artifacts."""

from __future__ import annotations

import mimetypes

from flask import current_app, jsonify, request, send_file

from admin_app.admin_api import admin_required, api_error, json_api_blueprint, not_found
from admin_app.audit import SHA256, artifact_file, parse_search, request_detail, search
from store.models import Artifact

bp = json_api_blueprint("audit_api", __name__)

# Shown in the browser; anything else (HTML, SVG, PDF …) is only ever downloaded, so a file a user
# sent through the gateway cannot run script on the admin app's origin.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@bp.get("/audit/search")
@admin_required
def search_audit():
    return jsonify(search(parse_search(request.args)))


@bp.get("/audit/<request_id>")
@admin_required
def show_request(request_id: str):
    detail = request_detail(request_id)
    if detail is None:
        return not_found(
            f"no request {request_id!r} in the audit log (GET /admin/audit/search finds them)",
            "request_not_found",
        )
    return jsonify(detail)


@bp.get("/artifacts/<sha256>")
@admin_required
def download_artifact(sha256: str):
    sha256 = sha256.lower()
    if not SHA256.match(sha256):
        return api_error(
            400, f"{sha256!r} is not a SHA-256 (64 hex digits)", "invalid_request_error", "invalid_sha256"
        )
    artifact = Artifact.get_or_none(Artifact.sha256 == sha256)
    if artifact is None:
        return not_found(f"no artifact with SHA-256 {sha256}", "artifact_not_found")
    path = artifact_file(current_app.config["ARTIFACT_STORAGE_PATH"], artifact.path)
    if path is None or not path.is_file():
        current_app.logger.warning(
            "artifact %s: file %r is missing or outside ARTIFACT_STORAGE_PATH", sha256, artifact.path
        )
        return not_found(
            f"artifact {sha256} is recorded but its file is not in ARTIFACT_STORAGE_PATH",
            "artifact_file_missing",
        )
    content_type = artifact.content_type or "application/octet-stream"
    extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    response = send_file(
        path,
        mimetype=content_type,
        as_attachment=content_type not in INLINE_TYPES,
        download_name=f"{sha256}{extension}",
        etag=sha256,
        max_age=0,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=0"
    return response
