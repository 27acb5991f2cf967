"""Who may call the admin API: admin keys and admin sessions; everyone else gets OpenAI-shaped errors."""

from __future__ import annotations

import datetime as dt

import pytest

import admin_app.key_auth
from admin_app.accounts import issue_key
from admin_app.key_auth import KeyVerifier
from store.models import ApiKey, User


def assert_api_error(response, status: int, code: str):
    assert response.status_code == status, response.data
    error = response.get_json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == code
    assert error["message"]


def test_no_key_is_401_with_an_openai_shaped_error(client):
    response = client.get("/admin/backends")
    assert_api_error(response, 401, "missing_api_key")
    assert response.get_json()["error"]["type"] == "authentication_error"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", ["mr_abcd1234_" + "x" * 40, "not-a-key", "mr_"])
def test_an_unknown_or_malformed_key_is_401(client, admin_key, key):
    assert_api_error(
        client.get("/admin/backends", headers={"Authorization": f"Bearer {key}"}), 401, "invalid_api_key"
    )


def test_a_known_prefix_with_a_wrong_secret_is_401(client, admin_key):
    forged = admin_key[:-1] + ("A" if admin_key[-1] != "A" else "B")
    assert_api_error(client.get("/admin/backends", headers={"X-API-Key": forged}), 401, "invalid_api_key")


def test_an_admin_key_is_accepted_as_bearer_and_as_x_api_key(client, admin_key):
    assert client.get("/admin/backends", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
    assert client.get("/admin/backends", headers={"X-API-Key": admin_key}).status_code == 200


def test_a_student_key_is_403(client, make_user):
    key = issue_key(make_user("stu", "student"))
    response = client.get("/admin/backends", headers={"Authorization": f"Bearer {key}"})
    assert_api_error(response, 403, "insufficient_role")
    assert "student" in response.get_json()["error"]["message"]


def test_a_revoked_key_stops_working_on_the_next_request(client, admin_headers, admin_key):
    assert client.get("/admin/backends", headers=admin_headers).status_code == 200
    ApiKey.update(status="revoked").where(ApiKey.prefix == admin_key[3:11]).execute()
    assert_api_error(client.get("/admin/backends", headers=admin_headers), 401, "invalid_api_key")


def test_an_expired_key_is_401(client, admin_headers, admin_key):
    ApiKey.update(expires_at=dt.datetime(2000, 1, 1)).where(ApiKey.prefix == admin_key[3:11]).execute()
    assert_api_error(client.get("/admin/backends", headers=admin_headers), 401, "invalid_api_key")


def test_the_key_of_a_deactivated_user_is_401(client, admin, admin_headers):
    User.update(active=False).where(User.id == admin.id).execute()
    assert_api_error(client.get("/admin/backends", headers=admin_headers), 401, "invalid_api_key")


def test_repeated_calls_pay_argon2_once_per_cache_window(app, admin_key, monkeypatch):
    calls = []
    real_verify = admin_app.key_auth.verify_key
    monkeypatch.setattr(admin_app.key_auth, "verify_key", lambda h, k: calls.append(k) or real_verify(h, k))
    now = [100.0]
    verifier = KeyVerifier(cache_seconds=5, clock=lambda: now[0])

    assert verifier.user_for(admin_key).username == "root"
    assert verifier.user_for(admin_key).username == "root"
    assert len(calls) == 1
    now[0] += 5.1
    assert verifier.user_for(admin_key).username == "root"
    assert len(calls) == 2


def test_the_cache_never_accepts_a_wrong_secret_for_a_cached_prefix(app, admin_key):
    verifier = KeyVerifier()
    assert verifier.user_for(admin_key) is not None
    assert verifier.user_for(admin_key[:-1] + ("A" if admin_key[-1] != "A" else "B")) is None


def test_an_admin_session_may_read_the_admin_api(client, admin, log_in):
    log_in("root")
    assert client.get("/admin/backends").status_code == 200


def test_a_student_session_is_403(client, make_user, log_in):
    make_user("stu", "student")
    log_in("stu")
    assert_api_error(client.get("/admin/backends"), 403, "insufficient_role")


def test_session_writes_need_the_csrf_header(client, admin, admin_headers, log_in, csrf_token):
    backend = client.post(
        "/admin/backends/register",
        headers=admin_headers,
        json={"name": "gpu1", "url": "http://gpu1:11434", "engine": "ollama"},
    ).get_json()
    log_in("root")

    assert_api_error(client.post(f"/admin/backends/{backend['id']}/disable"), 400, "csrf_failed")
    token = csrf_token(client.get("/").data)
    response = client.post(f"/admin/backends/{backend['id']}/disable", headers={"X-CSRFToken": token})
    assert response.status_code == 200
    assert response.get_json()["enabled"] is False


def test_a_key_wins_over_a_session_and_a_bad_key_is_not_rescued_by_one(client, admin, log_in):
    log_in("root")
    bad = {"Authorization": "Bearer mr_abcd1234_" + "x" * 40}
    assert_api_error(client.get("/admin/backends", headers=bad), 401, "invalid_api_key")
