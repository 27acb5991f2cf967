"""The admin API (JSON): who may call it, its error shape, and the backends.

Users, keys and quotas live in `accounts_api`, the audit log in `audit_api`; all share the
authorisation (`admin_required`: an admin's API key or an admin's browser session with CSRF)
and the OpenAI-shaped errors defined here.
"""

from __future__ import annotations

import functools

import peewee
from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import validate_csrf
from werkzeug.exceptions import HTTPException
from wtforms.validators import ValidationError

from admin_app.admin_actions import record_action
from admin_app.api_values import FieldError
from admin_app.backends import (
    RegistrationError,
    backend_json,
    backend_state,
    backends_with_models,
    validate_registration,
)
from admin_app.key_auth import KeyVerifier, key_from_request
from admin_app.queue import QUEUE_SNAPSHOT_MAX_AGE, live_queue
from store.db import database
from store.models import Backend, BackendModel, utcnow

VERIFIER = "mindrouter.key_verifier"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def api_error(status: int, message: str, type_: str, code: str, param: str | None = None):
    """OpenAI's error shape, so the same client code reads errors from the gateway and from here."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mindrouter admin"'
    return response


def field_error(error: FieldError):
    """A body field or query filter that could not be accepted: 400 or 422, naming the field."""
    return api_error(error.status, str(error), "invalid_request_error", error.code, error.param)


def not_found(message: str, code: str):
    return api_error(404, message, "not_found_error", code)


def conflict(message: str, code: str):
    return api_error(409, message, "conflict_error", code)


def http_error_as_json(error: HTTPException):
    return api_error(
        error.code or 500, error.description, "invalid_request_error", error.name.lower().replace(" ", "_")
    )


def json_api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint under /admin whose errors, raised or returned, all come in the API's JSON shape.
    Register it CSRF-exempt: `authenticate` checks CSRF itself for session calls."""
    blueprint = Blueprint(name, import_name, url_prefix="/admin")
    blueprint.register_error_handler(HTTPException, http_error_as_json)
    blueprint.register_error_handler(FieldError, field_error)
    return blueprint


bp = json_api_blueprint("admin_api", __name__)


@bp.record_once
def _create_key_verifier(state) -> None:
    state.app.extensions[VERIFIER] = KeyVerifier()


def json_body(required: bool = True, shape: str = "a JSON object") -> dict:
    """The request's JSON object; an empty body is `{}` where nothing is required."""
    body = request.get_json(force=True, silent=True)
    if body is None:
        if not required and not request.get_data():
            return {}
        raise FieldError(f"request body must be JSON: {shape}", status=400, code="invalid_json")
    if not isinstance(body, dict):
        raise FieldError(f"request body must be a JSON object: {shape}", status=400, code="invalid_json")
    return body


def authenticate():
    """The acting user, or the error response: a key when one is sent, else the browser session."""
    key = key_from_request(request)
    if key is not None:
        user = current_app.extensions[VERIFIER].user_for(key)
        if user is None:
            return None, api_error(
                401, "invalid, revoked or expired API key", "authentication_error", "invalid_api_key"
            )
        return user, None
    if not current_user.is_authenticated:
        return None, api_error(
            401,
            "missing API key: send `Authorization: Bearer mr_...` or `X-API-Key: mr_...`, or log in",
            "authentication_error",
            "missing_api_key",
        )
    if request.method not in SAFE_METHODS:
        # A session cookie rides along on cross-site requests; an API key header never does.
        try:
            validate_csrf(request.headers.get("X-CSRFToken"))
        except ValidationError as error:
            return None, api_error(
                400,
                f"{error} Session requests need the X-CSRFToken header (the csrf-token meta tag of any "
                "page), or use an API key instead.",
                "invalid_request_error",
                "csrf_failed",
            )
    return current_user.user, None


def user_required(view):
    """Any active user, by API key or session (with CSRF on writes), reaches `view`; `g.actor` is that user."""

    @functools.wraps(view)
    def wrapped(**kwargs):
        user, error = authenticate()
        if error is not None:
            return error
        g.actor = user
        return view(**kwargs)

    return wrapped


def admin_required(view):
    """Only an active admin, by API key or session, reaches `view`; `g.actor` is that admin."""

    @functools.wraps(view)
    def wrapped(**kwargs):
        user, error = authenticate()
        if error is not None:
            return error
        if user.role != "admin":
            return api_error(
                403,
                f"user {user.username!r} has role {user.role!r}; this needs role 'admin'",
                "permission_error",
                "insufficient_role",
            )
        g.actor = user
        return view(**kwargs)

    return wrapped


def _backend_or_404(backend_id: int):
    backend = Backend.get_or_none(Backend.id == backend_id)
    if backend is None:
        return None, api_error(
            404,
            f"no backend with id {backend_id} (GET /admin/backends lists them)",
            "not_found_error",
            "backend_not_found",
        )
    return backend, None


def _models_of(backend: Backend) -> list[BackendModel]:
    return list(backend.models.order_by(BackendModel.resident.desc(), BackendModel.name))


@bp.get("/backends")
@admin_required
def list_backends():
    return jsonify(
        {"backends": [backend_json(backend, models) for backend, models in backends_with_models()]}
    )


@bp.post("/backends/register")
@admin_required
def register_backend():
    body = request.get_json(force=True, silent=True)
    if body is None:
        return api_error(
            400,
            "request body must be JSON: {name, url, engine, max_concurrent, gpu_memory_gb}",
            "invalid_request_error",
            "invalid_json",
        )
    try:
        fields = validate_registration(body)
    except RegistrationError as error:
        return api_error(error.status, str(error), "invalid_request_error", "invalid_field", error.param)
    existing = Backend.get_or_none(Backend.name == fields["name"])
    if existing is None:
        try:
            with database.atomic():
                backend = Backend.create(**fields)
                record_action(
                    g.actor, "backend.register", f"backend:{backend.id}", after=backend_state(backend)
                )
            return jsonify(backend_json(backend, [])), 201
        except peewee.IntegrityError:  # registered by someone else between our check and our insert
            existing = Backend.get_or_none(Backend.name == fields["name"])
            if existing is None:
                raise
    return api_error(
        409,
        f"a backend named {fields['name']!r} already exists (id {existing.id})",
        "conflict_error",
        "backend_exists",
        "name",
    )


def _change_backend(backend_id: int, action: str, **columns):
    """Set only these columns (the gateway writes health and models to the same row concurrently)."""
    backend, error = _backend_or_404(backend_id)
    if error is not None:
        return error
    before = backend_state(backend)
    with database.atomic():
        Backend.update(**columns).where(Backend.id == backend.id).execute()
        backend = Backend.get_by_id(backend.id)
        record_action(g.actor, action, f"backend:{backend.id}", before=before, after=backend_state(backend))
    return jsonify(backend_json(backend, _models_of(backend)))


@bp.post("/backends/<int:backend_id>/enable")
@admin_required
def enable_backend(backend_id: int):
    """Back in rotation: enabled, and no longer draining."""
    return _change_backend(backend_id, "backend.enable", enabled=True, draining=False)


@bp.post("/backends/<int:backend_id>/disable")
@admin_required
def disable_backend(backend_id: int):
    """Out of rotation at once; requests already running on it finish."""
    return _change_backend(backend_id, "backend.disable", enabled=False)


@bp.post("/backends/<int:backend_id>/drain")
@admin_required
def drain_backend(backend_id: int):
    """No new requests; the running ones finish (then disable it for maintenance)."""
    return _change_backend(backend_id, "backend.drain", draining=True)


@bp.post("/backends/<int:backend_id>/refresh")
@admin_required
def refresh_backend(backend_id: int):
    """Ask the gateways to re-examine it now: poll it afresh and forget its circuit breaker's failures."""
    return _change_backend(backend_id, "backend.refresh", refresh_requested_at=utcnow())


@bp.get("/queue")
@admin_required
def queue():
    """The live queue of every gateway, from the snapshots they write every second."""
    return jsonify({"gateways": live_queue(QUEUE_SNAPSHOT_MAX_AGE)})
