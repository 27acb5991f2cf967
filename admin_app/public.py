"""Pages anyone may see: the cluster's status."""

from __future__ import annotations

from flask import Blueprint, render_template

from admin_app.backends import backends_with_models

bp = Blueprint("public", __name__)


@bp.get("/")
def index():
    return render_template("public/status.html", backends=backends_with_models())
