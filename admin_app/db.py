"""Binds the shared store to one app: its database, a connection per request, a schema check."""

from __future__ import annotations

import peewee
from flask import Flask, abort, current_app
from flask.signals import appcontext_pushed

import migrations
from store.db import database, open_database

EXTENSION = "mindrouter.database"


def init_app(app: Flask) -> None:
    db = open_database(app.config["DATABASE_URL"])
    if isinstance(db, peewee.SqliteDatabase):
        # SQLite's own LOWER folds ASCII only, MariaDB's all of Unicode; the audit search needs them to agree.
        db.register_function(_unicode_lower, "lower", 1, deterministic=True)
    app.extensions[EXTENSION] = db
    app.extensions[EXTENSION + ".schema_checked"] = False
    appcontext_pushed.connect(_bind_store, app)
    app.before_request(_require_current_schema)
    app.teardown_appcontext(_close_connection)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def app_database(app: Flask | None = None):
    return (app or current_app).extensions[EXTENSION]


def _bind_store(app: Flask, **_) -> None:
    # The models use one process-wide proxy. A process normally serves one app, but tests build
    # many (SQLite and MariaDB side by side), so each app context points the proxy at its own.
    db = app_database(app)
    if database.obj is not db:
        database.initialize(db)


def _require_current_schema() -> None:
    key = EXTENSION + ".schema_checked"
    if current_app.extensions[key]:
        return
    try:
        migrations.require_current_schema(app_database())
    except migrations.SchemaOutOfDate as error:
        current_app.logger.error("%s", error)
        abort(503, description=str(error))
    current_app.extensions[key] = True


def _close_connection(_exception=None) -> None:
    # Peewee opens the connection on the first query (autoconnect); this ends it with the request.
    db = app_database()
    if not db.is_closed():
        db.close()
