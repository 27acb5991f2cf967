"""An admin app on an empty database, once on SQLite and once on MariaDB, and ways to act in it.

Every test sees a migrated database with no rows. On SQLite that is a new file per test; on
MariaDB it is one database migrated once per run and emptied after each test, because migrating a
new MariaDB database costs 0.5 to 3 s of DDL a test and emptying thirteen tables costs ~10 ms.
Tests that need a database without the schema use `unmigrated_app`, which always gets a new one.
"""

from __future__ import annotations

import os
import re
import secrets
from urllib.parse import urlparse

import pymysql
import pytest
from argon2 import PasswordHasher

import migrations
import store.api_keys
from admin_app import create_app
from admin_app.accounts import create_user, issue_key
from admin_app.db import app_database
from store.db import open_database
from store.models import ALL_MODELS

TEST_PASSWORD = "correct horse"
MYSQL_SERVER_URL = os.environ.get("MINDROUTER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Argon2 with the smallest cost: the default costs ~0.2 s a hash on a CI core, and these tests
    check who gets in, not how hard a hash is to crack. Verification reads the cost from the hash."""
    monkeypatch.setattr(store.api_keys, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def _mysql_server():
    server = urlparse(MYSQL_SERVER_URL)
    connection = pymysql.connect(
        host=server.hostname,
        port=server.port or 3306,
        user=server.username or "root",
        password=server.password or "",
        autocommit=True,
    )
    return server, connection


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def database_kind(request) -> str:
    return request.param


@pytest.fixture
def any_database_url(database_kind, request) -> str:
    """A new database without any table, of this test's kind (overrides the suite-wide fixture)."""
    return request.getfixturevalue("sqlite_url" if database_kind == "sqlite" else "mysql_url")


@pytest.fixture(scope="session")
def shared_mariadb_url():
    """One migrated MariaDB database for the whole run; `migrated_database_url` empties it after each test."""
    server, connection = _mysql_server()
    name = f"mindrouter_admin_{secrets.token_hex(4)}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = f"mysql://{server.netloc}/{name}"
    db = open_database(url)
    migrations.upgrade(db)
    db.close()
    yield url
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    connection.close()


def _empty_mariadb(url: str) -> None:
    _, connection = _mysql_server()
    name = urlparse(url).path.lstrip("/")
    with connection.cursor() as cursor:
        cursor.execute(f"USE `{name}`")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        connection.begin()  # one commit, one log flush, for all the tables
        for model in ALL_MODELS:
            cursor.execute(f"DELETE FROM `{model._meta.table_name}`")
        connection.commit()
    connection.close()


@pytest.fixture
def migrated_database_url(database_kind, request):
    """A migrated database without rows: a new SQLite file, or the run's MariaDB database, emptied after."""
    if database_kind == "sqlite":
        url = request.getfixturevalue("any_database_url")
        db = open_database(url)
        migrations.upgrade(db)
        db.close()
        yield url
        return
    url = request.getfixturevalue("shared_mariadb_url")
    yield url
    _empty_mariadb(url)


def _make_app(database_url: str, tmp_path, monkeypatch):
    """The app on `database_url`. The working directory is a fresh one, so no `.env` leaks in."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "DEFAULT_TOKEN_BUDGET", "ARTIFACT_STORAGE_PATH"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret",
            "ARTIFACT_STORAGE_PATH": str(tmp_path / "artifacts"),
        }
    )
    # Pushing a context points the store's models at this app's database, for the test's own queries too.
    with app.app_context():
        pass
    return app


@pytest.fixture
def unmigrated_app(any_database_url, tmp_path, monkeypatch):
    """The app on a new database without the schema."""
    app = _make_app(any_database_url, tmp_path, monkeypatch)
    yield app
    app_database(app).close()


@pytest.fixture
def app(migrated_database_url, tmp_path, monkeypatch):
    app = _make_app(migrated_database_url, tmp_path, monkeypatch)
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
