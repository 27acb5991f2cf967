"""Browser sessions: username and password login with flask-login, CSRF-protected and throttled.

The login form is throttled per username and per client address: after `LOGIN_FAILURES_PER_USERNAME`
(10) failed logins for one username, or `LOGIN_FAILURES_PER_ADDRESS` (30) from one address, within
`LOGIN_FAILURE_WINDOW_S` (300 s), the form answers 429 with a wait and Retry-After, without checking
the password (no Argon2 to spend). A login is counted when it starts and taken back when it succeeds.
Each throttle table holds at most 10 000 usernames or addresses.

The counts live in the process: gunicorn's workers each keep their own, so with N workers a
username or address gets up to N times the limit before every worker refuses it. The client
address is the one the gateway writes into X-Forwarded-For when the request comes from a loopback
or private address (the gateway, in every supported deployment), else the connection's own.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from scheduler.failures import FailureBudget
from scheduler.limits import retry_after_header
from store.api_keys import hash_password, verify_password
from store.models import User

bp = Blueprint("auth", __name__)
THROTTLE_EXTENSION = "mindrouter_login_throttle"
LOGIN_THROTTLE_DEFAULTS = {"LOGIN_FAILURES_PER_USERNAME": 10, "LOGIN_FAILURES_PER_ADDRESS": 30,
                           "LOGIN_FAILURE_WINDOW_S": 300}
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Log in to see that page."


class SessionUser(UserMixin):
    """The logged-in user as flask-login wants it, around the store's `User` row."""

    def __init__(self, user: User):
        self.user = user
        self.id = user.id

    @property
    def is_active(self) -> bool:
        return self.user.active


@login_manager.user_loader
def load_user(user_id: str) -> SessionUser | None:
    user = User.get_or_none(User.id == int(user_id)) if user_id.isdigit() else None
    return SessionUser(user) if user and user.active else None


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired()])


_unknown_user_hash: str | None = None


def _check_password(user: User | None, password: str) -> bool:
    # An unknown username costs the same Argon2 check as a wrong password, so timing reveals no names.
    global _unknown_user_hash
    if user is None or not user.password_hash:
        _unknown_user_hash = _unknown_user_hash or hash_password("no such user")
        verify_password(_unknown_user_hash, password)
        return False
    return verify_password(user.password_hash, password)


class LoginThrottle:
    """Failed logins per username and per client address, shared by the threads of one process."""

    def __init__(self, per_username: int, per_address: int, window_s: float) -> None:
        self.usernames = FailureBudget(per_username, window_s)
        self.addresses = FailureBudget(per_address, window_s)
        self.lock = threading.Lock()

    def start(self, username: str, address: str, now: float) -> float:
        """Seconds to wait when this login may not be tried now; else 0, and the attempt is counted."""
        with self.lock:
            wait = max(self.usernames.wait(username, now), self.addresses.wait(address, now))
            if wait <= 0:
                self.usernames.charge(username, now)
                self.addresses.charge(address, now)
            return wait

    def succeeded(self, username: str, address: str, started: float) -> None:
        with self.lock:
            self.usernames.refund(username, started)
            self.addresses.refund(address, started)


@bp.record_once
def _install_throttle(state) -> None:
    config = {name: state.app.config.get(name, default) for name, default in LOGIN_THROTTLE_DEFAULTS.items()}
    state.app.extensions[THROTTLE_EXTENSION] = LoginThrottle(
        config["LOGIN_FAILURES_PER_USERNAME"], config["LOGIN_FAILURES_PER_ADDRESS"], config["LOGIN_FAILURE_WINDOW_S"])


def client_address() -> str:
    """The caller's address: the gateway's X-Forwarded-For when the gateway (a loopback or private peer) sent it."""
    peer = request.remote_addr or ""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
    try:
        trusted = ipaddress.ip_address(peer).is_private
    except ValueError:
        trusted = False
    return forwarded if trusted and forwarded else peer


def _safe_next(target: str | None) -> str:
    """Only a path on this site: `next` must not turn the login page into an open redirect."""
    parts = urlsplit(target or "")
    if target and target.startswith("/") and not target.startswith("//") and not parts.netloc:
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    form = LoginForm()
    if form.validate_on_submit():
        throttle: LoginThrottle = current_app.extensions[THROTTLE_EXTENSION]
        username, address, started = form.username.data.strip().lower(), client_address(), time.monotonic()
        wait = throttle.start(username, address, started)
        if wait > 0:
            retry_after = retry_after_header(wait)
            flash(f"Too many failed logins for this username or from your address; try again in {retry_after} s.",
                  "error")
            return render_template("auth/login.html", form=form), 429, {"Retry-After": retry_after}
        user = User.get_or_none(User.username == form.username.data)
        if _check_password(user, form.password.data) and user.active:
            throttle.succeeded(username, address, started)
            login_user(SessionUser(user))
            return redirect(_safe_next(request.args.get("next")))
        flash("Unknown username or wrong password.", "error")
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
def logout():
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("public.index"))
