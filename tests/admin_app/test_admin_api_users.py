"""Users through the admin API: list, create, change settings, with validation and the audit trail."""

from __future__ import annotations

from admin_app.accounts import issue_key
from scheduler.quota import period_of
from store.api_keys import verify_password
from store.models import Quota, User, utcnow
from tests.admin_app.api_assertions import actions, assert_api_error, the_action


def test_listing_users_needs_an_admin(client, make_user):
    assert_api_error(client.get("/admin/users"), 401, "missing_api_key")
    student_key = issue_key(make_user("stu", "student"))
    assert_api_error(
        client.get("/admin/users", headers={"Authorization": f"Bearer {student_key}"}),
        403,
        "insufficient_role",
    )


def test_the_user_list_shows_settings_and_effective_weight_but_no_hash(client, admin_headers, make_user):
    make_user("ada", "faculty")
    users = {u["username"]: u for u in client.get("/admin/users", headers=admin_headers).get_json()["users"]}
    assert set(users) == {"ada", "root"}
    assert users["ada"]["role"] == "faculty" and users["ada"]["weight"] == 3.0
    assert users["ada"]["weight_override"] is None and users["ada"]["active"] is True
    assert users["ada"]["can_log_in"] is True
    assert not any("hash" in field for field in users["ada"])


def test_create_user_answers_201_and_the_user_can_log_in(client, admin, admin_headers):
    response = client.post(
        "/admin/users",
        headers=admin_headers,
        json={"username": "ada", "role": "staff", "password": "pw-ada-123"},
    )
    assert response.status_code == 201, response.data
    assert response.get_json()["role"] == "staff"
    user = User.get(User.username == "ada")
    assert verify_password(user.password_hash, "pw-ada-123")

    action, before, after = the_action("user.create", f"user:{user.id}")
    assert action.actor_id == admin.id
    assert before == {} and after["username"] == "ada" and after["role"] == "staff"


def test_create_user_without_password_makes_a_key_only_user(client, admin_headers):
    body = client.post(
        "/admin/users", headers=admin_headers, json={"username": "batch", "role": "student"}
    ).get_json()
    assert body["can_log_in"] is False


def test_create_user_refuses_bad_bodies(client, admin_headers):
    cases = [
        ({"role": "staff"}, 400, "missing_field"),
        ({"username": "ada"}, 400, "missing_field"),
        ({"username": "ada", "role": "wizard"}, 422, "invalid_field"),
        ({"username": "ada", "role": "staff", "password": "short"}, 422, "invalid_field"),
        ({"username": "a b", "role": "staff"}, 422, "invalid_field"),
        ({"username": "ada", "role": "staff", "admin": True}, 422, "invalid_field"),
        (["ada"], 400, "invalid_json"),
    ]
    for body, status, code in cases:
        assert_api_error(client.post("/admin/users", headers=admin_headers, json=body), status, code)
    assert_api_error(
        client.post("/admin/users", headers=admin_headers, data="{not json"), 400, "invalid_json"
    )
    assert User.select().count() == 1  # the admin only
    assert not actions("user.create")[1:]


def test_create_user_with_a_taken_name_is_409(client, admin_headers, make_user):
    make_user("ada", "staff")
    response = client.post("/admin/users", headers=admin_headers, json={"username": "ada", "role": "student"})
    assert "already exists" in assert_api_error(response, 409, "conflict")["message"]


def test_update_user_changes_only_what_is_sent_and_records_before_and_after(
    client, admin, admin_headers, make_user
):
    user = make_user("ada", "student")
    response = client.post(
        f"/admin/users/{user.id}",
        headers=admin_headers,
        json={"role": "faculty", "weight_override": 5, "rpm_override": 120, "max_concurrent_override": 2},
    )
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert (body["role"], body["weight"], body["rpm_override"], body["max_concurrent_override"]) == (
        "faculty",
        5.0,
        120,
        2,
    )
    assert body["token_budget_override"] is None and body["active"] is True

    action, before, after = the_action("user.update", f"user:{user.id}")
    assert action.actor_id == admin.id
    assert (before["role"], before["weight_override"], before["rpm_override"]) == ("student", None, None)
    assert (after["role"], after["weight_override"], after["rpm_override"]) == ("faculty", 5.0, 120)


def test_null_clears_an_override(client, admin_headers, make_user):
    user = make_user("ada", "staff")
    client.post(
        f"/admin/users/{user.id}", headers=admin_headers, json={"weight_override": 7, "rpm_override": 10}
    )
    response = client.post(f"/admin/users/{user.id}", headers=admin_headers, json={"weight_override": None})
    assert response.get_json()["weight_override"] is None and response.get_json()["weight"] == 2.0
    assert User.get_by_id(user.id).rpm_override == 10


def test_deactivating_a_user_stops_their_keys(client, admin_headers, make_user):
    user = make_user("ada", "admin")
    key = issue_key(user)
    assert client.get("/admin/users", headers={"X-API-Key": key}).status_code == 200
    assert (
        client.post(f"/admin/users/{user.id}", headers=admin_headers, json={"active": False}).status_code
        == 200
    )
    assert_api_error(client.get("/admin/users", headers={"X-API-Key": key}), 401, "invalid_api_key")


def test_update_user_refuses_bad_values_and_changes_nothing(client, admin_headers, make_user):
    user = make_user("ada", "staff")
    cases = [
        {"role": "wizard"},
        {"weight_override": -1},
        {"weight_override": 0},
        {"weight_override": "3"},
        {"token_budget_override": -5},
        {"token_budget_override": 1.5},
        {"rpm_override": -1},
        {"max_concurrent_override": True},
        {"active": "yes"},
        {"username": "eve"},
    ]
    for body in cases:
        error = assert_api_error(
            client.post(f"/admin/users/{user.id}", headers=admin_headers, json=body), 422, "invalid_field"
        )
        assert error["param"] == next(iter(body)), error
    assert_api_error(client.post(f"/admin/users/{user.id}", headers=admin_headers, json={}), 400)
    assert not actions("user.update")
    assert User.get_by_id(user.id).role == "staff"


def test_zero_is_a_valid_override(client, admin_headers, make_user):
    user = make_user("ada", "staff")
    body = {"token_budget_override": 0, "rpm_override": 0, "max_concurrent_override": 0}
    assert client.post(f"/admin/users/{user.id}", headers=admin_headers, json=body).status_code == 200
    stored = User.get_by_id(user.id)
    assert (stored.token_budget_override, stored.rpm_override, stored.max_concurrent_override) == (0, 0, 0)


def test_update_or_show_an_unknown_user_is_404(client, admin_headers):
    assert_api_error(client.post("/admin/users/999999", headers=admin_headers, json={"active": False}), 404)
    assert_api_error(client.get("/admin/users/999999", headers=admin_headers), 404, "user_not_found")


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(client, admin, admin_headers, make_user):
    for body in ({"role": "staff"}, {"active": False}):
        assert_api_error(client.post(f"/admin/users/{admin.id}", headers=admin_headers, json=body), 409)
    other = make_user("second", "admin")
    assert (
        client.post(f"/admin/users/{admin.id}", headers=admin_headers, json={"active": False}).status_code
        == 200
    )
    assert User.get_by_id(other.id).role == "admin"


def test_a_budget_change_moves_this_months_quota_and_keeps_top_ups(client, admin_headers, make_user):
    user = make_user("ada", "student")  # budget 100 000 (the default, times 1)
    Quota.create(user=user, period=period_of(utcnow()), budget=100_000 + 5_000, used=1_000)  # 5 000 approved

    client.post(f"/admin/users/{user.id}", headers=admin_headers, json={"role": "faculty"})  # x3
    assert Quota.get(Quota.user == user.id).budget == 300_000 + 5_000
    client.post(f"/admin/users/{user.id}", headers=admin_headers, json={"token_budget_override": 50_000})
    assert Quota.get(Quota.user == user.id).budget == 50_000 + 5_000

    last = actions("user.update", f"user:{user.id}")[-1]
    assert '"current_quota_budget": 305000' in last.before and '"current_quota_budget": 55000' in last.after
