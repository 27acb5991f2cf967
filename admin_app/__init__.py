"""The MindRouter admin app: public status page, login, dashboards, the admin API and operator commands.

Development: `flask --app admin_app run --port 8001`; production: `gunicorn "admin_app:create_app()"`.
"""

from __future__ import annotations

from flask import Flask, render_template
from flask_bootstrap import Bootstrap5
from flask_wtf.csrf import CSRFError, CSRFProtect

from admin_app import (
    accounts_api,
    admin_api,
    aliases_api,
    audit_api,
    auth,
    commands,
    console,
    dashboard,
    db,
    presentation,
    public,
)
from admin_app.config import ensure_secret_key, settings_from_environment

csrf = CSRFProtect()
bootstrap = Bootstrap5()


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session, not one hour
    )
    settings = {**settings_from_environment(), **(test_config or {})}
    app.config.from_mapping(settings)
    ensure_secret_key(app.config)
    # Secure cookies outside development (browsers keep them on http://localhost too), unless
    # SESSION_COOKIE_SECURE says otherwise; HTTP-only always.
    if "SESSION_COOKIE_SECURE" not in settings:
        app.config["SESSION_COOKIE_SECURE"] = not (app.config.get("DEBUG") or app.config.get("TESTING"))
    app.config.update(SESSION_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_HTTPONLY=True,
                      REMEMBER_COOKIE_SECURE=app.config["SESSION_COOKIE_SECURE"],
                      BOOTSTRAP_SERVE_LOCAL=True)  # Bootstrap's files from the installed package: no CDN

    db.init_app(app)
    commands.init_app(app)
    csrf.init_app(app)
    auth.login_manager.init_app(app)
    bootstrap.init_app(app)
    presentation.init_app(app)
    for status in (400, 403, 404, 429):
        app.register_error_handler(status, _error_page)
    app.register_error_handler(CSRFError, _error_page)

    app.register_blueprint(public.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(console.bp)
    # Key-authenticated calls carry no cookie to forge; session calls are CSRF-checked in `authenticate`
    # (and the quota-request form by its own form token).
    csrf.exempt(dashboard.request_quota)
    for api in (admin_api.bp, accounts_api.bp, audit_api.bp, aliases_api.bp):
        csrf.exempt(api)
        app.register_blueprint(api)
    return app


def _error_page(error):
    """Errors of the pages as a page (the JSON API blueprints answer theirs in JSON)."""
    return render_template("error.html", error=error), error.code
