"""An admin app on an empty database, once on SQLite and once on MariaDB, and ways to act in it.

Every test sees a migrated database with no rows, through an app of its own configuration. The
run keeps one app and one migrated database per kind and empties the tables after each test:
migrating a new MariaDB database costs 0.5 to 3 s of DDL, building an app and compiling its
templates ~0.2 s, and emptying the tables ~10 ms. Tests that need a database without the schema
use `unmigrated_app`, which always gets a new database and a new app.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlparse

import peewee
import pymysql
import pytest
from argon2 import PasswordHasher
from flask import Flask

import migrations
import store.api_keys
from admin_app import create_app
from admin_app.accounts import create_user, issue_key
from admin_app.db import app_database
from store.models import ALL_MODELS

TEST_PASSWORD = "correct horse"
TEST_TOKEN_BUDGET = 100_000
MYSQL_SERVER_URL = os.environ.get("MINDROUTER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")
# Children before parents, so emptying the tables needs no foreign-key tricks on either database.
TABLES_CHILDREN_FIRST = list(reversed(peewee.sort_models(ALL_MODELS)))


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Argon2 with the smallest cost: the default costs ~0.2 s a hash on a CI core, and these tests
    check who gets in, not how hard a hash is to crack. Verification reads the cost from the hash."""
    monkeypatch.setattr(store.api_keys, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def _build_app(database_url: str, work_dir: Path, artifacts: Path) -> Flask:
    """The app on `database_url`, built in `work_dir` with none of the caller's settings leaking in."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work_dir)  # no `.env` but the test's own
        for name in ("DATABASE_URL", "DEFAULT_TOKEN_BUDGET", "ARTIFACT_STORAGE_PATH", "FLASK_DEBUG"):
            patch.delenv(name, raising=False)
        return create_app(
            {
                "TESTING": True,
                "DATABASE_URL": database_url,
                "SECRET_KEY": "test-secret",
                "DEFAULT_TOKEN_BUDGET": TEST_TOKEN_BUDGET,
                "ARTIFACT_STORAGE_PATH": str(artifacts),
            }
        )


def _bind(app: Flask) -> Flask:
    # Pushing a context points the store's models at this app's database, for the test's own queries too.
    with app.app_context():
        pass
    return app


class SharedApps:
    """One migrated database and one app on it per kind, made on first use and dropped at the end."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.apps: dict[str, Flask] = {}
        self.mysql_database: str | None = None

    def app(self, kind: str) -> Flask:
        if kind not in self.apps:
            app = _build_app(self._new_database(kind), self.work_dir, self.work_dir / "artifacts")
            migrations.upgrade(app_database(app))
            self.apps[kind] = app
        return self.apps[kind]

    def _new_database(self, kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.work_dir / 'shared.db'}"
        server = urlparse(MYSQL_SERVER_URL)
        self.mysql_database = f"mindrouter_admin_{secrets.token_hex(4)}"
        with _mysql_server_connection() as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.mysql_database}` CHARACTER SET utf8mb4")
        return f"mysql://{server.netloc}/{self.mysql_database}"

    def close(self) -> None:
        for app in self.apps.values():
            app_database(app).close()
        if self.mysql_database:
            with _mysql_server_connection() as connection, connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.mysql_database}`")


def _mysql_server_connection():
    server = urlparse(MYSQL_SERVER_URL)
    return pymysql.connect(
        host=server.hostname,
        port=server.port or 3306,
        user=server.username or "root",
        password=server.password or "",
        autocommit=True,
    )


@pytest.fixture(scope="session")
def shared_apps(tmp_path_factory):
    apps = SharedApps(tmp_path_factory.mktemp("admin_app"))
    yield apps
    apps.close()


def _empty_tables(app: Flask) -> None:
    db = app_database(app)
    with app.app_context(), db.atomic():  # one commit, one log flush, for all the tables
        for model in TABLES_CHILDREN_FIRST:
            model.delete().execute()
    db.close()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def database_kind(request) -> str:
    return request.param


@pytest.fixture
def any_database_url(database_kind, request) -> str:
    """A new database without any table, of this test's kind (overrides the suite-wide fixture)."""
    return request.getfixturevalue("sqlite_url" if database_kind == "sqlite" else "mysql_url")


@pytest.fixture
def app(database_kind, shared_apps, tmp_path, monkeypatch):
    """The admin app on a migrated database without rows; artifacts and `.env` in the test's tmp_path."""
    app = shared_apps.app(database_kind)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(app.config, "ARTIFACT_STORAGE_PATH", str(tmp_path / "artifacts"))
    yield _bind(app)
    _empty_tables(app)


@pytest.fixture
def migrated_database_url(app) -> str:
    """The URL of the database `app` uses."""
    return app.config["DATABASE_URL"]


@pytest.fixture
def unmigrated_app(any_database_url, tmp_path):
    """A new app on a new database without the schema."""
    app = _bind(_build_app(any_database_url, tmp_path, tmp_path / "artifacts"))
    yield app
    app_database(app).close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def cli(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    def make(username: str, role: str = "student", password: str | None = TEST_PASSWORD):
        return create_user(username, role, password)

    return make


@pytest.fixture
def admin(make_user):
    return make_user("root", "admin")


@pytest.fixture
def admin_key(admin) -> str:
    return issue_key(admin, "tests")


@pytest.fixture
def admin_headers(admin_key) -> dict:
    return {"Authorization": f"Bearer {admin_key}"}


def csrf_token_of(page: bytes) -> str:
    """The CSRF token of a page: its form's hidden field, or the `csrf-token` meta tag of base.html."""
    found = re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        rb'<meta name="csrf-token" content="([^"]+)">', page
    )
    return found.group(1).decode()


@pytest.fixture
def csrf_token():
    return csrf_token_of


@pytest.fixture
def log_in(client):
    """Logs `client` in through the login form, as a browser would; returns the response."""

    def log_in(username: str, password: str = TEST_PASSWORD):
        token = csrf_token_of(client.get("/login").data)
        return client.post("/login", data={"username": username, "password": password, "csrf_token": token})

    return log_in
