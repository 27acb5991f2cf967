"""The MindRouter admin app: public status page, login, dashboards, the admin API and operator commands.

Development: `flask --app admin_app run --port 8001`; production: `gunicorn "admin_app:create_app()"`.
"""

from __future__ import annotations

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from admin_app import accounts_api, admin_api, audit_api, auth, commands, dashboard, db, public
from admin_app.config import ensure_secret_key, settings_from_environment

csrf = CSRFProtect()


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session, not one hour
    )
    app.config.from_mapping(settings_from_environment())
    if test_config is not None:
        app.config.from_mapping(test_config)
    ensure_secret_key(app.config)

    db.init_app(app)
    commands.init_app(app)
    csrf.init_app(app)
    auth.login_manager.init_app(app)

    app.register_blueprint(public.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(dashboard.bp)
    # Key-authenticated calls carry no cookie to forge; session calls are CSRF-checked in `authenticate`
    # (and the quota-request form by its own form token).
    csrf.exempt(dashboard.request_quota)
    for api in (admin_api.bp, accounts_api.bp, audit_api.bp):
        csrf.exempt(api)
        app.register_blueprint(api)
    return app
