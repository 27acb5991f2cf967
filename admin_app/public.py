"""Pages anyone may see: the cluster's status at a glance, and the form to ask for an account with API access."""

from __future__ import annotations

import threading
import time

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Regexp

from admin_app.accounts import USERNAME_PATTERN
from admin_app.admin_actions import record_action
from admin_app.auth import client_address
from admin_app.backends import backends_with_models
from admin_app.queue import QUEUE_SNAPSHOT_MAX_AGE, live_queue
from admin_app.usage import start_of_day, tokens_per_second_by_minute, users_active_since
from scheduler.failures import FailureBudget
from scheduler.limits import retry_after_header
from store.api_keys import hash_password
from store.models import KeyRequest, User, utcnow

bp = Blueprint("public", __name__)
THROTTLE_EXTENSION = "mindrouter_request_access_throttle"

REQUESTABLE_ROLES = ("student", "staff", "faculty")  # admin is given, never asked for
MAX_PENDING_KEY_REQUESTS = 500  # a bound on what an unauthenticated form can pile up
EMAIL_SHAPE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"  # the shape only: an admin reads it before approving


@bp.record_once
def _install_throttle(state) -> None:
    # Each request costs an Argon2 hash and a row: a bound per client address (per process, like the login's).
    limit = state.app.config.get("ACCESS_REQUESTS_PER_ADDRESS", 5)
    state.app.extensions[THROTTLE_EXTENSION] = (FailureBudget(limit, 3600), threading.Lock())


class KeyRequestForm(FlaskForm):
    username = StringField("Username", validators=[
        DataRequired(), Length(max=64),
        Regexp(USERNAME_PATTERN, message="letters, digits and . _ @ - only, starting with a letter or digit")])
    email = EmailField("Email", validators=[
        DataRequired(), Length(max=255), Regexp(EMAIL_SHAPE, message="an address like name@example.edu")])
    role = SelectField("Role asked for", choices=list(REQUESTABLE_ROLES))
    reason = TextAreaField("What it is for", validators=[DataRequired(), Length(max=2000)])
    password = PasswordField("Password for the dashboard", validators=[DataRequired(), Length(min=8, max=1024)])


def cluster_status() -> dict:
    now = utcnow()
    backends = backends_with_models()
    gateways = live_queue(QUEUE_SNAPSHOT_MAX_AGE)
    waiting = sum(gateway["waiting"] for gateway in gateways)
    oldest = max((row.get("oldest_wait_s") or 0 for gateway in gateways for row in gateway["queues"]), default=0)
    return {
        "backends": backends,
        "up": sum(1 for backend, _ in backends if backend.enabled and backend.health == "healthy"),
        "models": sorted({model.name for _, models in backends for model in models}),
        "waiting": waiting,
        "running": sum(gateway["in_flight"] for gateway in gateways),
        "oldest_wait_s": oldest,
        "gateways": len(gateways),
        "tokens_per_s": tokens_per_second_by_minute(now),
        "active_today": users_active_since(start_of_day(now)),
    }


@bp.get("/")
def index():
    # No form here: the status page sets no cookie, so caches and the anonymous stay cookie-free.
    return render_template("public/status.html", **cluster_status())


@bp.route("/request-access", methods=["GET", "POST"])
def request_access():
    form = KeyRequestForm()
    if request.method == "GET":
        return render_template("public/request_access.html", form=form)
    if not form.validate():
        for field, messages in form.errors.items():
            for message in messages:
                flash(f"{getattr(form, field).label.text}: {message}", "error")
        return render_template("public/request_access.html", form=form), 400
    budget, lock = current_app.extensions[THROTTLE_EXTENSION]
    with lock:
        wait = budget.wait(client_address(), time.monotonic())
        if wait <= 0:
            budget.charge(client_address(), time.monotonic())
    if wait > 0:
        retry_after = retry_after_header(wait)
        flash(f"Too many requests from your address; try again in {retry_after} s.", "error")
        return render_template("public/request_access.html", form=form), 429, {"Retry-After": retry_after}
    username = form.username.data.strip()
    taken = User.get_or_none(User.username == username) or KeyRequest.get_or_none(
        (KeyRequest.username == username) & (KeyRequest.status == "pending"))
    if taken:
        flash(f"The username {username!r} is taken or already asked for; choose another.", "error")
        return render_template("public/request_access.html", form=form), 409
    if KeyRequest.select().where(KeyRequest.status == "pending").count() >= MAX_PENDING_KEY_REQUESTS:
        flash("Too many requests are waiting for an admin; try again later.", "error")
        return render_template("public/request_access.html", form=form), 429
    row = KeyRequest.create(username=username, email=form.email.data.strip(), role=form.role.data,
                            reason=form.reason.data.strip(), password_hash=hash_password(form.password.data))
    record_action(None, "key_request.create", f"key_request:{row.id}",
                  after={"username": username, "email": row.email, "role": row.role})
    current_app.logger.info("key request %s from %r waits for an admin", row.id, username)
    flash(f"Thanks, {username}: an admin will look at your request. Once approved, log in with the password "
          "you chose and create your API keys on your dashboard.", "info")
    return redirect(url_for("public.index"), 303)
