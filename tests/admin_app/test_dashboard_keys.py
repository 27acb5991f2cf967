"""Users manage their own API keys from the dashboard: create (shown once), list, revoke; CSRF on every form."""

from __future__ import annotations

import re

import pytest

from admin_app.accounts import issue_key
from admin_app.dashboard import MAX_ACTIVE_KEYS
from store.api_keys import key_prefix, verify_key
from store.models import ApiKey
from tests.admin_app.api_assertions import actions, the_action

KEY_ON_PAGE = re.compile(r'<code class="secret" id="new-key">(mr_[a-z0-9]{8}_[A-Za-z0-9]{40})</code>')


@pytest.fixture
def ada(make_user, log_in):
    user = make_user("ada", "staff")
    log_in("ada")
    return user


@pytest.fixture
def token(client, csrf_token):
    return lambda: csrf_token(client.get("/dashboard").data)


def test_creating_a_key_shows_it_once(client, ada, token):
    response = client.post("/dashboard/keys", data={"label": "notebook", "csrf_token": token()})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    key = KEY_ON_PAGE.search(response.get_data(as_text=True)).group(1)
    row = ApiKey.get(ApiKey.prefix == key_prefix(key))
    assert row.user_id == ada.id and row.label == "notebook" and verify_key(row.key_hash, key)
    action, _, _ = the_action("key.create", f"key:{row.id}")
    assert action.actor_id == ada.id

    again = client.get("/dashboard").get_data(as_text=True)
    assert key not in again and f"mr_{row.prefix}_" in again and "notebook" in again
    assert "Set-Cookie" not in response.headers or key not in response.headers["Set-Cookie"]


def test_creating_a_key_needs_csrf_and_a_label(client, ada, token):
    assert client.post("/dashboard/keys", data={"label": "x"}).status_code == 400
    assert client.post("/dashboard/keys", data={"label": "", "csrf_token": token()}).status_code == 400
    assert client.post("/dashboard/keys", data={"label": "x" * 129, "csrf_token": token()}).status_code == 400
    assert ApiKey.select().count() == 0


def test_a_user_holds_a_bounded_number_of_active_keys(client, ada, token):
    for n in range(MAX_ACTIVE_KEYS):
        issue_key(ada, f"k{n}")
    response = client.post("/dashboard/keys", data={"label": "one more", "csrf_token": token()})
    assert response.status_code == 409 and "revoke one" in response.get_data(as_text=True)
    assert ApiKey.select().count() == MAX_ACTIVE_KEYS


def test_revoking_an_own_key(client, ada, token):
    key = issue_key(ada, "laptop")
    row = ApiKey.get(ApiKey.prefix == key_prefix(key))
    response = client.post(f"/dashboard/keys/{row.id}/revoke", data={"csrf_token": token()})
    assert response.status_code == 303
    assert ApiKey.get_by_id(row.id).status == "revoked" and ApiKey.get_by_id(row.id).revoked_at
    action, before, after = the_action("key.revoke", f"key:{row.id}")
    assert action.actor_id == ada.id and (before["status"], after["status"]) == ("active", "revoked")
    page = client.get("/dashboard").get_data(as_text=True)
    assert "is revoked" in page and f"/dashboard/keys/{row.id}/revoke" not in page

    again = client.post(f"/dashboard/keys/{row.id}/revoke", data={"csrf_token": token()})
    assert again.status_code == 303 and len(actions("key.revoke")) == 1


def test_revoking_needs_csrf_and_only_reaches_own_keys(client, ada, make_user, token):
    own = ApiKey.get(ApiKey.prefix == key_prefix(issue_key(ada, "own")))
    assert client.post(f"/dashboard/keys/{own.id}/revoke").status_code == 400
    other = ApiKey.get(ApiKey.prefix == key_prefix(issue_key(make_user("bob", "staff"), "bob's")))
    assert client.post(f"/dashboard/keys/{other.id}/revoke", data={"csrf_token": token()}).status_code == 404
    assert ApiKey.get_by_id(other.id).status == ApiKey.get_by_id(own.id).status == "active"


def test_key_pages_need_a_login(client, make_user):
    key = ApiKey.get(ApiKey.prefix == key_prefix(issue_key(make_user("ada", "staff"))))
    assert client.post("/dashboard/keys", data={"label": "x"}).status_code in (302, 400)
    assert client.post(f"/dashboard/keys/{key.id}/revoke").status_code in (302, 400)
    assert ApiKey.get_by_id(key.id).status == "active"


def test_the_dashboard_shows_this_months_quota(client, ada):
    page = client.get("/dashboard").get_data(as_text=True)
    assert "200,000" in page  # a staff member's budget: 2 x DEFAULT_TOKEN_BUDGET
