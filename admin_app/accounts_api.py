"""The admin API for accounts and policy (JSON): users, their API keys, quotas and quota requests.

Every change writes an `AdminAction` with the state before and after; a key is shown once, in the
answer that creates it, and never again (lists show its prefix).
"""

from __future__ import annotations

import datetime as dt

from flask import current_app, g, jsonify, request

from admin_app import api_values as values
from admin_app.accounts import (
    USER_SETTINGS,
    AccountConflict,
    AccountError,
    create_key,
    create_user,
    key_state,
    keys_query,
    relabel_key,
    revoke_key,
    rotate_key,
    set_key_expiry,
    update_user,
    user_state,
)
from admin_app.admin_api import admin_required, api_error, conflict, json_api_blueprint, json_body, not_found
from admin_app.quotas import (
    NOTE_MAX_LENGTH,
    QUOTA_REQUEST_STATUSES,
    QuotaConflict,
    decide_quota_request,
    quota_request_by_id,
    quota_request_json,
    quota_requests_query,
    standing_of,
    standings,
)
from scheduler.quota import period_of
from store.models import ROLES, ApiKey, QuotaRequest, User, utcnow

bp = json_api_blueprint("accounts_api", __name__)

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024
WEIGHT_LIMIT = 1000.0
TOKEN_BUDGET_LIMIT = 10**15
RPM_LIMIT = 1_000_000
CONCURRENCY_LIMIT = 10_000
KEY_STATUSES = ("active", "revoked")


def _default_budget() -> int:
    return current_app.config["DEFAULT_TOKEN_BUDGET"]


def _period_param() -> str:
    return values.period(request.args.get("period") or period_of(utcnow()))


def _user_or_404(user_id: int):
    user = User.get_or_none(User.id == user_id)
    if user is None:
        return None, not_found(f"no user with id {user_id} (GET /admin/users lists them)", "user_not_found")
    return user, None


def _user_named(username: str):
    user = User.get_or_none(User.username == username)
    if user is None:
        return None, not_found(f"no user {username!r} (GET /admin/users lists them)", "user_not_found")
    return user, None


def _user_filter() -> User:
    """The user a `?user=NAME` filter names; an unknown name is a bad filter (400), like the audit's."""
    user = User.get_or_none(User.username == request.args["user"])
    if user is None:
        raise values.FieldError(
            f"no user {request.args['user']!r} (GET /admin/users lists them)",
            status=400,
            param="user",
            code="invalid_filter",
        )
    return user


def _key_or_404(key_id: int):
    key = keys_query().where(ApiKey.id == key_id).first()
    if key is None:
        return None, not_found(f"no API key with id {key_id} (GET /admin/keys lists them)", "key_not_found")
    return key, None


def _account_error(error: AccountError):
    if isinstance(error, AccountConflict):
        return conflict(str(error), "conflict")
    return api_error(422, str(error), "invalid_request_error", "invalid_field")


# --- users -------------------------------------------------------------------------------------


@bp.get("/users")
@admin_required
def list_users():
    return jsonify({"users": [user_state(user) for user in User.select().order_by(User.username)]})


@bp.post("/users")
@admin_required
def create_user_view():
    shape = "{username, role, password?}"
    body = values.check_fields(json_body(shape=shape), ("username", "role", "password"), shape)
    username = values.text("username", values.required(body, "username"), User.username.max_length)
    role = values.required(body, "role")
    if role not in ROLES:
        raise values.FieldError(f"unknown role {role!r} (use one of: {', '.join(ROLES)})", param="role")
    password = body.get("password")
    if password is not None:
        password = values.text("password", password, PASSWORD_MAX_LENGTH)
        if len(password) < PASSWORD_MIN_LENGTH:
            raise values.FieldError(
                f"'password' must have at least {PASSWORD_MIN_LENGTH} characters", param="password"
            )
    try:
        user = create_user(username, role, password, actor=g.actor)
    except AccountError as error:
        return _account_error(error)
    return jsonify(user_state(user)), 201


@bp.get("/users/<int:user_id>")
@admin_required
def show_user(user_id: int):
    user, error = _user_or_404(user_id)
    return error or jsonify(user_state(user))


def user_changes(body: dict) -> dict:
    """The checked settings of a `POST /admin/users/<id>` body; None clears an override."""
    shape = "{" + ", ".join(f"{name}?" for name in USER_SETTINGS) + "}"
    values.check_fields(body, USER_SETTINGS, shape)
    if not body:
        raise values.FieldError(f"nothing to change: send at least one of {shape}", status=400)
    changes = {}
    for name, value in body.items():
        if name == "role":
            if value not in ROLES:
                raise values.FieldError(
                    f"unknown role {value!r} (use one of: {', '.join(ROLES)})", param=name
                )
            changes[name] = value
        elif name == "active":
            changes[name] = values.boolean(name, value)
        elif value is None:
            changes[name] = None
        elif name == "weight_override":
            # The scheduler needs a positive weight; `active: false` is how to stop a user.
            changes[name] = values.positive_number(name, value, WEIGHT_LIMIT)
        elif name == "token_budget_override":
            changes[name] = values.integer(name, value, 0, TOKEN_BUDGET_LIMIT)
        elif name == "rpm_override":
            changes[name] = values.integer(name, value, 0, RPM_LIMIT)
        elif name in ("max_concurrent_override", "max_queued_override"):
            changes[name] = values.integer(name, value, 0, CONCURRENCY_LIMIT)
    return changes


@bp.post("/users/<int:user_id>")
@admin_required
def update_user_view(user_id: int):
    user, error = _user_or_404(user_id)
    if error is not None:
        return error
    changes = user_changes(json_body())
    try:
        user = update_user(user, changes, g.actor, _default_budget())
    except AccountError as error:
        return _account_error(error)
    return jsonify(user_state(user))


@bp.get("/users/<int:user_id>/quota")
@admin_required
def user_quota(user_id: int):
    user, error = _user_or_404(user_id)
    if error is not None:
        return error
    pending = quota_requests_query().where(
        (QuotaRequest.user == user.id) & (QuotaRequest.status == "pending")
    )
    return jsonify(
        {
            **standing_of(user, _period_param(), _default_budget()).as_json(),
            "pending_requests": [quota_request_json(row) for row in pending],
        }
    )


# --- keys --------------------------------------------------------------------------------------


@bp.get("/keys")
@admin_required
def list_keys():
    query = keys_query()
    if request.args.get("user"):
        query = query.where(ApiKey.user == _user_filter().id)
    status = request.args.get("status")
    if status:
        if status not in KEY_STATUSES:
            raise values.FieldError(
                f"status {status!r} must be one of: {', '.join(KEY_STATUSES)}",
                status=400,
                param="status",
                code="invalid_filter",
            )
        query = query.where(ApiKey.status == status)
    return jsonify({"keys": [key_state(key) for key in query]})


def _key_owner(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return _user_or_404(value)
    if isinstance(value, str):
        return _user_named(value.strip())
    raise values.FieldError(f"'user' must be a username or a user id, not {value!r}", param="user")


def _future_expiry(body: dict) -> dt.datetime | None:
    if body.get("expires_at") is None:
        return None
    expires_at = values.timestamp("expires_at", body["expires_at"])
    if expires_at <= utcnow():
        raise values.FieldError(
            f"'expires_at' {body['expires_at']!r} is in the past; a new key must expire in the future",
            param="expires_at",
        )
    return expires_at


@bp.post("/keys")
@admin_required
def create_key_view():
    shape = "{user, label, expires_at?, rpm_override?}"
    body = values.check_fields(json_body(shape=shape), ("user", "label", "expires_at", "rpm_override"), shape)
    user, error = _key_owner(values.required(body, "user"))
    if error is not None:
        return error
    label = values.text("label", values.required(body, "label"), ApiKey.label.max_length)
    expires_at = _future_expiry(body)
    rpm_override = body.get("rpm_override")
    if rpm_override is not None:
        rpm_override = values.integer("rpm_override", rpm_override, 0, RPM_LIMIT)
    try:
        row, key = create_key(user, label, g.actor, expires_at=expires_at, rpm_override=rpm_override)
    except AccountError as error:
        return _account_error(error)
    return jsonify({**key_state(row), "key": key}), 201


@bp.post("/keys/<int:key_id>/label")
@admin_required
def relabel_key_view(key_id: int):
    key, error = _key_or_404(key_id)
    if error is not None:
        return error
    body = values.check_fields(json_body(shape="{label}"), ("label",), "{label}")
    label = values.text("label", values.required(body, "label"), ApiKey.label.max_length)
    return jsonify(key_state(relabel_key(key, label, g.actor)))


@bp.post("/keys/<int:key_id>/revoke")
@admin_required
def revoke_key_view(key_id: int):
    key, error = _key_or_404(key_id)
    if error is not None:
        return error
    values.check_fields(json_body(required=False), (), "no body")
    try:
        return jsonify(key_state(revoke_key(key, g.actor)))
    except AccountConflict as error:
        return conflict(str(error), "key_revoked")


@bp.post("/keys/<int:key_id>/expire")
@admin_required
def expire_key_view(key_id: int):
    key, error = _key_or_404(key_id)
    if error is not None:
        return error
    shape = "{expires_at} (an ISO-8601 time, a past one expires the key at once; null: never expires)"
    body = values.check_fields(json_body(shape=shape), ("expires_at",), shape)
    if "expires_at" not in body:
        raise values.FieldError("missing required field 'expires_at'", 400, "expires_at", "missing_field")
    expires_at = None if body["expires_at"] is None else values.timestamp("expires_at", body["expires_at"])
    try:
        return jsonify(key_state(set_key_expiry(key, expires_at, g.actor)))
    except AccountConflict as error:
        return conflict(str(error), "key_revoked")


@bp.post("/keys/<int:key_id>/rotate")
@admin_required
def rotate_key_view(key_id: int):
    key, error = _key_or_404(key_id)
    if error is not None:
        return error
    values.check_fields(json_body(required=False), (), "no body")
    try:
        row, new_key = rotate_key(key, g.actor)
    except AccountConflict as error:
        return conflict(str(error), "key_not_rotatable")
    old = keys_query().where(ApiKey.id == key.id).get()
    return jsonify({**key_state(row), "key": new_key, "replaced": key_state(old)}), 201


# --- quotas ------------------------------------------------------------------------------------


@bp.get("/quotas")
@admin_required
def list_quotas():
    period = _period_param()
    return jsonify({"period": period, "quotas": [s.as_json() for s in standings(period, _default_budget())]})


@bp.get("/quota-requests")
@admin_required
def list_quota_requests():
    query = quota_requests_query()
    status = request.args.get("status")
    if status:
        if status not in QUOTA_REQUEST_STATUSES:
            raise values.FieldError(
                f"status {status!r} must be one of: {', '.join(QUOTA_REQUEST_STATUSES)}",
                status=400,
                param="status",
                code="invalid_filter",
            )
        query = query.where(QuotaRequest.status == status)
    if request.args.get("user"):
        query = query.where(QuotaRequest.user == _user_filter().id)
    return jsonify({"quota_requests": [quota_request_json(row) for row in query]})


def _decide(request_id: int, approve: bool):
    row = quota_request_by_id(request_id)
    if row is None:
        return not_found(
            f"no quota request with id {request_id} (GET /admin/quota-requests lists them)",
            "quota_request_not_found",
        )
    shape = "{note?}" if approve else "{note} (why it is denied; the user sees it)"
    body = values.check_fields(json_body(required=not approve, shape=shape), ("note",), shape)
    if approve:
        note = values.text("note", body.get("note") or "", NOTE_MAX_LENGTH, allow_empty=True)
    else:
        note = values.text("note", values.required(body, "note"), NOTE_MAX_LENGTH)
    try:
        decided = decide_quota_request(row, approve, g.actor, note, _default_budget())
    except QuotaConflict as error:
        return conflict(str(error), "already_decided")
    return jsonify(quota_request_json(decided))


@bp.post("/quota-requests/<int:request_id>/approve")
@admin_required
def approve_quota_request(request_id: int):
    return _decide(request_id, approve=True)


@bp.post("/quota-requests/<int:request_id>/deny")
@admin_required
def deny_quota_request(request_id: int):
    return _decide(request_id, approve=False)
