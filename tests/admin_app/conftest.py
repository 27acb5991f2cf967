"""An admin app on a fresh database (SQLite and MariaDB, through `any_database_url`), and ways to act in it."""

from __future__ import annotations

import re

import pytest
from argon2 import PasswordHasher

import migrations
import store.api_keys
from admin_app import create_app
from admin_app.accounts import create_user, issue_key
from admin_app.db import app_database

TEST_PASSWORD = "correct horse"


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Argon2 with the smallest cost: the default costs ~0.2 s a hash on a CI core, and these tests
    check who gets in, not how hard a hash is to crack. Verification reads the cost from the hash."""
    monkeypatch.setattr(store.api_keys, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def unmigrated_app(any_database_url, tmp_path, monkeypatch):
    """The app on an empty database. The working directory is a fresh one, so no `.env` leaks in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"TESTING": True, "DATABASE_URL": any_database_url, "SECRET_KEY": "test-secret"})
    # Pushing a context points the store's models at this app's database, for the test's own queries too.
    with app.app_context():
        pass
    yield app
    app_database(app).close()


@pytest.fixture
def app(unmigrated_app):
    migrations.upgrade(app_database(unmigrated_app))
    return unmigrated_app


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
