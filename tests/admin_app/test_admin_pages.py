"""The server-rendered pages: public status, login with CSRF, the placeholder dashboard, logout."""

from __future__ import annotations

import re

from admin_app.accounts import issue_key
from store.models import Backend, BackendModel


def test_the_status_page_lists_a_registered_backend_with_its_models(client, admin_headers):
    backend = client.post(
        "/admin/backends/register",
        headers=admin_headers,
        json={"name": "gpu-a100-1", "url": "http://10.0.0.5:11434", "engine": "ollama"},
    ).get_json()
    Backend.update(health="healthy").where(Backend.id == backend["id"]).execute()
    BackendModel.create(backend=backend["id"], name="llama3.2:latest", resident=True)
    BackendModel.create(backend=backend["id"], name="qwen2.5:7b", resident=False)

    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for text in ("gpu-a100-1", "ollama", "healthy", "llama3.2:latest", "qwen2.5:7b"):
        assert text in html
    assert html.count("resident</span>") == 1
    assert "10.0.0.5" not in html  # the public page does not publish internal addresses


def test_the_status_page_says_when_no_backend_is_registered(client):
    assert "No backends registered yet" in client.get("/").get_data(as_text=True)


def test_pages_link_the_stylesheet_and_carry_no_inline_styles(client):
    html = client.get("/").get_data(as_text=True) + client.get("/login").get_data(as_text=True)
    assert "/static/style.css" in html
    assert not re.search(r"<style|\sstyle=", html)
    assert client.get("/static/style.css").status_code == 200


def test_login_without_the_csrf_token_is_refused(client, make_user):
    make_user("ada", "faculty", password="pw-ada")
    response = client.post("/login", data={"username": "ada", "password": "pw-ada"})
    assert response.status_code == 400
    assert client.get("/dashboard").status_code == 302


def test_login_with_a_wrong_password_stays_logged_out(client, make_user, log_in):
    make_user("ada", "faculty", password="pw-ada")
    response = log_in("ada", "wrong")
    assert response.status_code == 200
    assert "Unknown username or wrong password" in response.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302


def test_login_of_an_unknown_user_looks_like_a_wrong_password(client, log_in):
    assert "Unknown username or wrong password" in log_in("nobody", "x").get_data(as_text=True)


def test_a_deactivated_user_cannot_log_in(client, make_user, log_in):
    user = make_user("ada", "faculty", password="pw-ada")
    user.active = False
    user.save()
    log_in("ada", "pw-ada")
    assert client.get("/dashboard").status_code == 302


def test_login_then_the_dashboard_shows_the_user_and_their_key_prefixes(client, make_user, log_in):
    user = make_user("ada", "faculty", password="pw-ada")
    key = issue_key(user, "laptop")

    response = log_in("ada", "pw-ada")
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"

    html = client.get("/dashboard").get_data(as_text=True)
    assert "ada" in html and "faculty" in html
    assert f"mr_{key[3:11]}_" in html and "laptop" in html
    assert key not in html


def test_login_follows_a_local_next(client, make_user, csrf_token):
    make_user("ada", "faculty", password="pw-ada")
    from_dashboard = client.get("/dashboard")
    assert from_dashboard.status_code == 302
    login_url = from_dashboard.headers["Location"]
    assert login_url.startswith("/login?next=")

    form = {"username": "ada", "password": "pw-ada", "csrf_token": csrf_token(client.get(login_url).data)}
    assert client.post(login_url, data=form).headers["Location"] == "/dashboard"


def test_login_does_not_redirect_off_site(client, make_user, csrf_token):
    make_user("ada", "faculty", password="pw-ada")
    form = {"username": "ada", "password": "pw-ada", "csrf_token": csrf_token(client.get("/login").data)}
    assert client.post("/login?next=//evil.example/x", data=form).headers["Location"] == "/dashboard"


def test_anonymous_pages_set_no_session_cookie(client):
    assert "Set-Cookie" not in client.get("/").headers


def test_logout_needs_a_post_with_csrf_and_ends_the_session(client, make_user, log_in, csrf_token):
    make_user("ada", "faculty", password="pw-ada")
    log_in("ada", "pw-ada")

    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert client.get("/dashboard").status_code == 200

    token = csrf_token(client.get("/dashboard").data)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard").status_code == 302
