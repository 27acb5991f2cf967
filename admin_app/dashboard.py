"""Pages for a logged-in user. For now: who you are and which keys you hold."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from store.models import ApiKey

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.get("")
@login_required
def index():
    user = current_user.user
    keys = list(user.api_keys.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()))
    return render_template("dashboard/index.html", user=user, keys=keys)
