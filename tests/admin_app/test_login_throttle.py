"""The login form's throttle: failed logins per username and per client address, then 429 with a wait."""

from __future__ import annotations

import secrets

import pytest

import admin_app.auth
from tests.admin_app.conftest import csrf_token_of


@pytest.fixture
def attempt(client):
    """POST the login form from `address` (the connection's own, or the gateway's X-Forwarded-For)."""

    def attempt(username: str, password: str, address: str = "192.0.2.10", forwarded_for: str | None = None):
        environ = {"REMOTE_ADDR": address}
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        token = csrf_token_of(client.get("/login", environ_base=environ).data)
        response = client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                               environ_base=environ, headers=headers)
        if response.status_code == 302:
            client.post("/logout", data={"csrf_token": token}, environ_base=environ)
        return response

    return attempt


@pytest.fixture
def password_checks(monkeypatch):
    checks = []
    real = admin_app.auth.verify_password
    monkeypatch.setattr(admin_app.auth, "verify_password", lambda h, p: checks.append(p) or real(h, p))
    return checks


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def test_failed_logins_for_one_username_end_in_429_with_a_wait_and_no_password_check(
        attempt, make_user, password_checks):
    name = unique("ada")
    make_user(name, "faculty", password="pw-ada")
    address = f"198.51.100.{secrets.randbelow(200) + 1}"
    assert [attempt(name, "wrong", address).status_code for _ in range(10)] == [200] * 10
    checks_before = len(password_checks)
    refused = attempt(name, "pw-ada", f"203.0.113.{secrets.randbelow(200) + 1}")  # the right password, elsewhere
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 300
    assert "Too many failed logins" in refused.get_data(as_text=True)
    assert len(password_checks) == checks_before
    assert attempt(unique("grace"), "wrong", address).status_code == 200  # other usernames are not held back


def test_failed_logins_from_one_address_end_in_429(attempt):
    address = f"192.0.2.{secrets.randbelow(200) + 1}"
    assert {attempt(unique("nobody"), "x", address).status_code for _ in range(30)} == {200}
    assert attempt(unique("nobody"), "x", address).status_code == 429
    assert attempt(unique("nobody"), "x", "192.0.2.250").status_code == 200


def test_a_successful_login_is_not_counted(attempt, make_user):
    name = unique("ada")
    make_user(name, "faculty", password="pw-ada")
    for _ in range(9):
        attempt(name, "wrong")
    assert attempt(name, "pw-ada").status_code == 302
    assert attempt(name, "wrong").status_code == 200  # the 10th failure
    assert attempt(name, "wrong").status_code == 429


def test_the_gateways_forwarded_address_is_the_one_counted(attempt):
    # Requests through the gateway all come from its address; X-Forwarded-For says whose they are.
    caller = f"203.0.113.{secrets.randbelow(200) + 1}"
    for _ in range(30):
        attempt(unique("nobody"), "x", "127.0.0.1", forwarded_for=caller)
    assert attempt(unique("nobody"), "x", "127.0.0.1", forwarded_for=caller).status_code == 429
    assert attempt(unique("nobody"), "x", "127.0.0.1", forwarded_for="203.0.113.250").status_code == 200


def test_a_forwarded_address_from_a_public_peer_is_ignored(attempt):
    peer = f"9.9.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"  # public: not the gateway
    for n in range(30):
        attempt(unique("nobody"), "x", peer, forwarded_for=f"192.0.2.{n}")
    assert attempt(unique("nobody"), "x", peer, forwarded_for="192.0.2.99").status_code == 429
