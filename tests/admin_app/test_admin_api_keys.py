"""API keys through the admin API: list, create, relabel, revoke, expire and rotate, each in the audit trail."""

from __future__ import annotations

import datetime as dt

import pytest

from admin_app.accounts import issue_key
from store.api_keys import key_prefix, verify_key
from store.models import ApiKey, utcnow
from tests.admin_app.api_assertions import actions, assert_api_error, the_action


@pytest.fixture
def ada(make_user):
    return make_user("ada", "student")


@pytest.fixture
def create(client, admin_headers):
    def create(**body):
        return client.post("/admin/keys", headers=admin_headers, json=body)

    return create


def works(client, key: str) -> bool:
    """Whether `key` still authenticates (the admin API answers 403 to a live non-admin key, 401 to a dead one)."""
    return client.get("/admin/backends", headers={"Authorization": f"Bearer {key}"}).status_code != 401


def test_create_shows_the_key_once_and_stores_only_its_hash(client, create, ada, admin):
    response = create(user="ada", label="laptop", rpm_override=30)
    assert response.status_code == 201, response.data
    body = response.get_json()
    key = body["key"]
    row = ApiKey.get(ApiKey.prefix == key_prefix(key))
    assert verify_key(row.key_hash, key)
    assert (body["user"], body["label"], body["rpm_override"], body["status"]) == (
        "ada",
        "laptop",
        30,
        "active",
    )
    assert body["prefix"] == row.prefix and body["expires_at"] is None
    assert works(client, key)

    action, before, after = the_action("key.create", f"key:{row.id}")
    assert action.actor_id == admin.id and before == {} and after["label"] == "laptop"
    assert key not in action.after and key.rsplit("_", 1)[1] not in action.after


def test_the_key_list_never_shows_a_key_or_its_hash(client, admin_headers, create, ada):
    key = create(user="ada", label="laptop").get_json()["key"]
    listed = client.get("/admin/keys?user=ada", headers=admin_headers)
    assert listed.status_code == 200
    (row,) = listed.get_json()["keys"]
    assert row["label"] == "laptop" and "key" not in row and not any("hash" in field for field in row)
    stored = ApiKey.get(ApiKey.prefix == key_prefix(key))
    assert key not in listed.get_data(as_text=True) and stored.key_hash not in listed.get_data(as_text=True)


def test_the_key_list_filters_by_user_and_status(client, admin_headers, ada, admin_key):
    issue_key(ada, "one")
    revoked = ApiKey.get(ApiKey.prefix == key_prefix(issue_key(ada, "two")))
    ApiKey.update(status="revoked").where(ApiKey.id == revoked.id).execute()

    everything = client.get("/admin/keys", headers=admin_headers).get_json()["keys"]
    assert {k["user"] for k in everything} == {"ada", "root"}
    adas = client.get("/admin/keys?user=ada", headers=admin_headers).get_json()["keys"]
    assert sorted(k["label"] for k in adas) == ["one", "two"]
    active = client.get("/admin/keys?user=ada&status=active", headers=admin_headers).get_json()["keys"]
    assert [k["label"] for k in active] == ["one"]
    assert_api_error(client.get("/admin/keys?user=nobody", headers=admin_headers), 400, "invalid_filter")
    assert_api_error(client.get("/admin/keys?status=lost", headers=admin_headers), 400, "invalid_filter")


def test_create_with_an_expiry_in_any_offset_stores_it_in_utc(create, ada):
    soon = (utcnow() + dt.timedelta(days=30)).replace(microsecond=0)
    offset = dt.timezone(dt.timedelta(hours=2))
    body = create(
        user=ada.id, label="ci", expires_at=soon.replace(tzinfo=dt.UTC).astimezone(offset).isoformat()
    )
    assert body.status_code == 201, body.data
    assert body.get_json()["expires_at"] == soon.isoformat() + "Z"
    assert ApiKey.get_by_id(body.get_json()["id"]).expires_at == soon


def test_create_refuses_bad_bodies(create, ada):
    past = (utcnow() - dt.timedelta(days=1)).isoformat()
    cases = [
        ({"label": "x"}, 400, "missing_field"),
        ({"user": "ada"}, 400, "missing_field"),
        ({"user": "ada", "label": "x", "expires_at": past}, 422, "invalid_field"),
        ({"user": "ada", "label": "x", "expires_at": "next tuesday"}, 422, "invalid_field"),
        ({"user": "ada", "label": "x", "rpm_override": -1}, 422, "invalid_field"),
        ({"user": "ada", "label": "x" * 129}, 422, "invalid_field"),
        ({"user": "ada", "label": "x", "secret": "mine"}, 422, "invalid_field"),
    ]
    for body, status, code in cases:
        assert_api_error(create(**body), status, code)
    assert_api_error(create(user="ghost", label="x"), 404, "user_not_found")
    assert ApiKey.select().where(ApiKey.user == ada.id).count() == 0


def test_label_changes_the_label_and_records_it(client, admin_headers, create, ada):
    key_id = create(user="ada", label="laptop").get_json()["id"]
    response = client.post(f"/admin/keys/{key_id}/label", headers=admin_headers, json={"label": "desktop"})
    assert response.status_code == 200 and response.get_json()["label"] == "desktop"
    _, before, after = the_action("key.label", f"key:{key_id}")
    assert (before["label"], after["label"]) == ("laptop", "desktop")
    assert_api_error(client.post(f"/admin/keys/{key_id}/label", headers=admin_headers, json={}), 400)


def test_revoke_stops_the_key_and_revoking_again_is_409(client, admin_headers, create, ada):
    created = create(user="ada", label="laptop").get_json()
    response = client.post(f"/admin/keys/{created['id']}/revoke", headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json()["status"] == "revoked" and response.get_json()["revoked_at"]
    assert not works(client, created["key"])
    _, before, after = the_action("key.revoke", f"key:{created['id']}")
    assert (before["status"], after["status"]) == ("active", "revoked")

    assert_api_error(
        client.post(f"/admin/keys/{created['id']}/revoke", headers=admin_headers), 409, "key_revoked"
    )
    assert len(actions("key.revoke")) == 1


def test_expire_sets_or_clears_the_expiry(client, admin_headers, create, ada):
    created = create(user="ada", label="laptop").get_json()
    url = f"/admin/keys/{created['id']}/expire"

    past = client.post(url, headers=admin_headers, json={"expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 200 and past.get_json()["expired"] is True
    assert not works(client, created["key"])

    cleared = client.post(url, headers=admin_headers, json={"expires_at": None})
    assert cleared.get_json()["expires_at"] is None and works(client, created["key"])
    assert len(actions("key.expire", f"key:{created['id']}")) == 2

    assert_api_error(client.post(url, headers=admin_headers, json={}), 400, "missing_field")
    assert_api_error(
        client.post(url, headers=admin_headers, json={"expires_at": "soon"}), 422, "invalid_field"
    )


def test_rotate_revokes_the_old_key_and_issues_one_with_the_same_settings(
    client, admin, admin_headers, create, ada
):
    expiry = (utcnow() + dt.timedelta(days=10)).replace(microsecond=0).isoformat() + "Z"
    old = create(user="ada", label="laptop", rpm_override=30, expires_at=expiry).get_json()

    response = client.post(f"/admin/keys/{old['id']}/rotate", headers=admin_headers)
    assert response.status_code == 201, response.data
    new = response.get_json()
    assert new["key"] != old["key"] and new["id"] != old["id"]
    assert (new["user"], new["label"], new["rpm_override"], new["expires_at"]) == (
        "ada",
        "laptop",
        30,
        expiry,
    )
    assert new["replaced"]["id"] == old["id"] and new["replaced"]["status"] == "revoked"
    assert works(client, new["key"]) and not works(client, old["key"])

    action, before, after = the_action("key.rotate", f"key:{old['id']}")
    assert action.actor_id == admin.id
    assert (before["status"], after["status"], after["replaced_by"]) == ("active", "revoked", new["id"])
    _, _, created_after = the_action("key.create", f"key:{new['id']}")
    assert created_after["replaces"] == old["id"]


def test_a_revoked_or_expired_key_cannot_be_rotated(client, admin_headers, create, ada):
    revoked = create(user="ada", label="a").get_json()
    client.post(f"/admin/keys/{revoked['id']}/revoke", headers=admin_headers)
    assert_api_error(client.post(f"/admin/keys/{revoked['id']}/rotate", headers=admin_headers), 409)

    expired = create(user="ada", label="b").get_json()
    ApiKey.update(expires_at=dt.datetime(2020, 1, 1)).where(ApiKey.id == expired["id"]).execute()
    error = assert_api_error(client.post(f"/admin/keys/{expired['id']}/rotate", headers=admin_headers), 409)
    assert "expire" in error["message"]
    assert ApiKey.select().where(ApiKey.user == ada.id).count() == 2
    assert not actions("key.rotate")


def test_acting_on_an_unknown_key_is_404(client, admin_headers):
    for verb in ("label", "revoke", "expire", "rotate"):
        response = client.post(f"/admin/keys/999999/{verb}", headers=admin_headers, json={"label": "x"})
        assert_api_error(response, 404, "key_not_found")


def test_key_actions_need_an_admin(client, ada):
    key = issue_key(ada, "own")
    row = ApiKey.get(ApiKey.prefix == key_prefix(key))
    headers = {"Authorization": f"Bearer {key}"}
    assert_api_error(client.post(f"/admin/keys/{row.id}/revoke", headers=headers), 403, "insufficient_role")
    assert_api_error(client.post("/admin/keys", json={"user": "ada", "label": "x"}), 401)
    assert ApiKey.get_by_id(row.id).status == "active"
