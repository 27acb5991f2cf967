"""Pages for a logged-in user: who you are, your API keys (create, revoke), your quota and requests for more."""

from __future__ import annotations

import datetime as dt

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import IntegerField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from admin_app import api_values as values
from admin_app.accounts import AccountConflict, AccountError, create_key, revoke_key
from admin_app.admin_api import conflict, field_error, json_body, user_required
from admin_app.queue import QUEUE_SNAPSHOT_MAX_AGE, live_queue
from admin_app.quotas import (
    AMOUNT_LIMIT,
    REASON_MAX_LENGTH,
    QuotaConflict,
    quota_request_json,
    quota_requests_query,
    request_more_quota,
    standing_of,
)
from admin_app.usage import recent_requests, start_of_month, user_tokens_by_day, user_tokens_by_model
from scheduler.quota import period_of
from store.models import ApiKey, QuotaRequest, User, utcnow

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

MAX_ACTIVE_KEYS = 20
RECENT_QUOTA_REQUESTS = 10


class NewKeyForm(FlaskForm):
    label = StringField(
        "Label",
        validators=[DataRequired(), Length(max=ApiKey.label.max_length)],
        description="What it is for",
    )
    expires_in_days = IntegerField("Expires after (days)", validators=[Optional(), NumberRange(min=1, max=3650)],
                                   description="Leave empty for a key that does not expire")


class QuotaRequestForm(FlaskForm):
    amount = IntegerField("Extra tokens", validators=[DataRequired(), NumberRange(min=1, max=AMOUNT_LIMIT)])
    reason = TextAreaField("Reason", validators=[DataRequired(), Length(max=REASON_MAX_LENGTH)])


def my_place_in_queue(user_id: int) -> dict:
    """The user's requests running and waiting now, over every gateway, per model."""
    models: dict[str, dict] = {}
    for gateway in live_queue(QUEUE_SNAPSHOT_MAX_AGE):
        for row in gateway["queues"]:
            if row["user_id"] == user_id:
                mine = models.setdefault(row["model"], {"model": row["model"], "waiting": 0, "running": 0,
                                                        "oldest_wait_s": 0.0})
                mine["waiting"] += row.get("waiting") or 0
                mine["running"] += row.get("in_flight") or 0
                mine["oldest_wait_s"] = max(mine["oldest_wait_s"], row.get("oldest_wait_s") or 0.0)
    return {"models": sorted(models.values(), key=lambda row: row["model"]),
            "waiting": sum(row["waiting"] for row in models.values()),
            "running": sum(row["running"] for row in models.values())}


def _render(user: User, status: int = 200, new_key: str | None = None, key_form=None, quota_form=None):
    keys = list(user.api_keys.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()))
    recent_requests_of_quota = quota_requests_query().where(QuotaRequest.user == user.id).limit(RECENT_QUOTA_REQUESTS)
    now = utcnow()
    page = render_template(
        "dashboard/index.html",
        user=user,
        keys=keys,
        now=now,
        by_day=user_tokens_by_day(user.id, now),
        by_model=user_tokens_by_model(user.id, start_of_month(now)),
        requests=recent_requests(user.id),
        queue=my_place_in_queue(user.id),
        new_key=new_key,
        quota=standing_of(user, period_of(utcnow()), current_app.config["DEFAULT_TOKEN_BUDGET"]),
        quota_requests=[quota_request_json(row) for row in recent_requests_of_quota],
        key_form=key_form or NewKeyForm(formdata=None),
        quota_form=quota_form or QuotaRequestForm(formdata=None),
    )
    return page, status


def _flash_errors(form: FlaskForm) -> None:
    for field, messages in form.errors.items():
        label = getattr(form, field).label.text if hasattr(form, field) else field
        for message in messages:
            flash(f"{label}: {message}", "error")


@bp.get("")
@login_required
def index():
    return _render(current_user.user)


@bp.post("/keys")
@login_required
def create_own_key():
    user = current_user.user
    form = NewKeyForm()
    if not form.validate():
        _flash_errors(form)
        return _render(user, 400, key_form=form)
    active = ApiKey.select().where((ApiKey.user == user.id) & (ApiKey.status == "active")).count()
    if active >= MAX_ACTIVE_KEYS:
        flash(f"You already hold {active} active keys; revoke one you no longer use first.", "error")
        return _render(user, 409, key_form=form)
    try:
        expires_at = utcnow() + dt.timedelta(days=form.expires_in_days.data) if form.expires_in_days.data else None
        _, key = create_key(user, form.label.data.strip(), actor=user, expires_at=expires_at)
    except AccountError as error:
        flash(str(error), "error")
        return _render(user, 500, key_form=form)
    # Rendered, not redirected: a redirect would carry the key through the (signed, not encrypted) session.
    page, status = _render(user, new_key=key)
    return page, status, {"Cache-Control": "no-store"}


@bp.post("/keys/<int:key_id>/revoke")
@login_required
def revoke_own_key(key_id: int):
    user = current_user.user
    key = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.user == user.id))
    if key is None:
        abort(404)
    try:
        revoke_key(key, actor=user)
        flash(f"Key mr_{key.prefix}_… is revoked; it stops working within seconds.", "info")
    except AccountConflict:
        flash(f"Key mr_{key.prefix}_… was already revoked.", "info")
    return redirect(url_for("dashboard.index"), 303)


@bp.post("/quota-requests")
def request_quota():
    """A browser form (session + form CSRF token) or JSON `{amount, reason}` (API key, or session with
    the X-CSRFToken header). Exempt from the app-wide CSRF check, which knows only the session case."""
    if request.is_json:
        return _request_quota_json()
    return _request_quota_form()


@login_required
def _request_quota_form():
    user = current_user.user
    form = QuotaRequestForm()
    if not form.validate():
        _flash_errors(form)
        return _render(user, 400, quota_form=form)
    try:
        request_more_quota(user, form.amount.data, form.reason.data.strip())
    except QuotaConflict as error:
        flash(str(error), "error")
        return _render(user, 409, quota_form=form)
    flash(f"Asked for {form.amount.data:,} more tokens; an admin will decide.", "info")
    return redirect(url_for("dashboard.index"), 303)


@user_required
def _request_quota_json():
    shape = "{amount, reason}"
    try:
        body = values.check_fields(json_body(shape=shape), ("amount", "reason"), shape)
        amount = values.integer("amount", values.required(body, "amount"), 1, AMOUNT_LIMIT)
        reason = values.text("reason", values.required(body, "reason"), REASON_MAX_LENGTH)
    except values.FieldError as error:
        return field_error(error)
    try:
        row = request_more_quota(g.actor, amount, reason)
    except QuotaConflict as error:
        return conflict(str(error), "too_many_pending_requests")
    return jsonify(quota_request_json(row)), 201
