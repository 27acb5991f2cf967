"""Browser sessions: username and password login with flask-login, CSRF-protected."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from store.api_keys import hash_password, verify_password
from store.models import User

bp = Blueprint("auth", __name__)
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
        user = User.get_or_none(User.username == form.username.data)
        if _check_password(user, form.password.data) and user.active:
            login_user(SessionUser(user))
            return redirect(_safe_next(request.args.get("next")))
        flash("Unknown username or wrong password.", "error")
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
def logout():
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("public.index"))
