"""Quotas: the shared get-or-create of a period's row, the admin views of budgets, and quota requests
from the dashboard (form or JSON) to an admin's decision, which adds budget exactly once."""

from __future__ import annotations

from urllib.parse import urlparse

import pymysql
import pytest

from admin_app.accounts import issue_key
from admin_app.quotas import MAX_PENDING_REQUESTS, get_or_create_quota, quota_of
from scheduler.quota import period_of
from store.db import database
from store.models import Quota, QuotaRequest, utcnow
from tests.admin_app.api_assertions import actions, assert_api_error, the_action

DEFAULT = 100_000  # DEFAULT_TOKEN_BUDGET in the tests' app


@pytest.fixture
def ada(make_user):
    return make_user("ada", "staff")  # budget 2 x DEFAULT


@pytest.fixture
def ada_key(ada) -> dict:
    return {"Authorization": f"Bearer {issue_key(ada, 'tests')}"}


def this_month() -> str:
    return period_of(utcnow())


# --- the shared row helper ---------------------------------------------------------------------


def test_get_or_create_quota_makes_the_row_once(app, ada):
    first = get_or_create_quota(ada.id, "2031-01", 5_000)
    again = get_or_create_quota(ada.id, "2031-01", 9_999)
    assert first.id == again.id and again.budget == 5_000 and again.used == 0
    assert Quota.select().count() == 1


def test_a_users_first_quota_row_starts_at_their_budget(app, ada):
    assert quota_of(ada, "2031-01", DEFAULT).budget == 2 * DEFAULT  # staff: twice the default
    ada.token_budget_override = 777
    assert quota_of(ada, "2031-02", DEFAULT).budget == 777


def test_get_or_create_quota_reads_the_winners_row_when_it_loses_the_race(app, ada, monkeypatch):
    winner = Quota.create(user=ada, period="2031-01", budget=123, used=5)
    # The loser looked before the winner inserted: it saw no row, so it tries to insert one.
    monkeypatch.setattr(Quota, "get_or_none", classmethod(lambda cls, *args, **kwargs: None))
    row = get_or_create_quota(ada.id, "2031-01", DEFAULT)
    assert (row.id, row.budget, row.used) == (winner.id, 123, 5)
    assert Quota.select().count() == 1


# Only MariaDB: SQLite lets one writer in at a time, so no other connection commits inside our transaction.
@pytest.mark.parametrize("database_kind", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True)
def test_get_or_create_quota_inside_a_transaction_sees_a_row_committed_after_it_began(
    app, ada, database_kind, migrated_database_url, monkeypatch
):
    server = urlparse(migrated_database_url)
    other = pymysql.connect(
        host=server.hostname,
        port=server.port or 3306,
        user=server.username or "root",
        password=server.password or "",
        database=server.path.lstrip("/"),
        autocommit=True,
    )
    monkeypatch.setattr(Quota, "get_or_none", classmethod(lambda cls, *args, **kwargs: None))
    with database.atomic():
        assert Quota.select().count() == 0  # the transaction's snapshot is taken here
        with other.cursor() as cursor:
            cursor.execute(
                "INSERT INTO quota (user_id, period, budget, used, reserved) VALUES (%s, '2031-01', 42, 0, 0)",
                (ada.id,),
            )
        assert get_or_create_quota(ada.id, "2031-01", DEFAULT).budget == 42
    other.close()


# --- admin views of quotas ---------------------------------------------------------------------


def test_quotas_show_the_default_budget_until_a_row_exists(client, admin_headers, ada):
    body = client.get("/admin/quotas", headers=admin_headers).get_json()
    assert body["period"] == this_month()
    quotas = {q["user"]: q for q in body["quotas"]}
    assert quotas["ada"] == {
        "user_id": ada.id,
        "user": "ada",
        "role": "staff",
        "active": True,
        "period": this_month(),
        "budget": 2 * DEFAULT,
        "used": 0,
        "reserved": 0,
        "remaining": 2 * DEFAULT,
        "source": "default",
    }
    assert quotas["root"]["budget"] == 10 * DEFAULT
    assert Quota.select().count() == 0  # looking creates nothing


def test_quotas_show_a_periods_row_with_what_remains(client, admin_headers, ada):
    Quota.create(user=ada, period="2030-05", budget=1_000, used=300, reserved=200)
    body = client.get("/admin/quotas?period=2030-05", headers=admin_headers).get_json()
    ada_quota = next(q for q in body["quotas"] if q["user"] == "ada")
    assert (ada_quota["budget"], ada_quota["used"], ada_quota["reserved"], ada_quota["remaining"]) == (
        1_000,
        300,
        200,
        500,
    )
    assert ada_quota["source"] == "quota"
    one = client.get(f"/admin/users/{ada.id}/quota?period=2030-05", headers=admin_headers).get_json()
    assert one["remaining"] == 500 and one["pending_requests"] == []


def test_a_bad_period_is_400(client, admin_headers, ada):
    for period in ("2030-13", "2030-1", "may", "2030-05-01"):
        assert_api_error(
            client.get(f"/admin/quotas?period={period}", headers=admin_headers), 400, "invalid_filter"
        )
        assert_api_error(
            client.get(f"/admin/users/{ada.id}/quota?period={period}", headers=admin_headers), 400
        )


def test_the_quota_of_an_unknown_user_is_404(client, admin_headers):
    assert_api_error(client.get("/admin/users/999999/quota", headers=admin_headers), 404, "user_not_found")


# --- asking for more -----------------------------------------------------------------------------


def ask(client, headers, amount=5_000, reason="thesis experiments"):
    return client.post(
        "/dashboard/quota-requests", headers=headers, json={"amount": amount, "reason": reason}
    )


def test_a_user_asks_from_the_dashboard_form(client, ada, log_in, csrf_token):
    log_in("ada")
    token = csrf_token(client.get("/dashboard").data)
    form = {"amount": "20000", "reason": "course project", "csrf_token": token}
    response = client.post("/dashboard/quota-requests", data=form)
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard"
    row = QuotaRequest.get()
    assert (row.user_id, row.amount, row.reason, row.status) == (ada.id, 20_000, "course project", "pending")
    action, _, after = the_action("quota_request.create", f"quota_request:{row.id}")
    assert action.actor_id == ada.id and after["amount"] == 20_000

    page = client.get("/dashboard").get_data(as_text=True)
    assert "20,000" in page and "course project" in page and "pending" in page


def test_the_dashboard_form_needs_its_csrf_token_and_valid_fields(client, ada, log_in, csrf_token):
    log_in("ada")
    assert client.post("/dashboard/quota-requests", data={"amount": "5", "reason": "x"}).status_code == 400
    token = csrf_token(client.get("/dashboard").data)
    for form in (
        {"amount": "0", "reason": "x"},
        {"amount": "5", "reason": ""},
        {"amount": "lots", "reason": "x"},
    ):
        assert client.post("/dashboard/quota-requests", data={**form, "csrf_token": token}).status_code == 400
    assert QuotaRequest.select().count() == 0


def test_a_user_asks_by_json_with_their_key(client, ada, ada_key):
    response = ask(client, ada_key)
    assert response.status_code == 201, response.data
    body = response.get_json()
    assert (body["user"], body["amount"], body["status"], body["decided_by"]) == (
        "ada",
        5_000,
        "pending",
        None,
    )


def test_a_json_request_with_a_session_needs_the_csrf_header(client, ada, log_in, csrf_token):
    log_in("ada")
    assert_api_error(ask(client, {}), 400, "csrf_failed")
    token = csrf_token(client.get("/dashboard").data)
    assert ask(client, {"X-CSRFToken": token}).status_code == 201


def test_json_requests_are_checked(client, ada_key):
    assert_api_error(ask(client, {}), 401)
    for amount, reason, status in (
        (0, "x", 422),
        (-5, "x", 422),
        (2.5, "x", 422),
        ("10", "x", 422),
        (10, "", 400),
        (10, "   ", 422),
        (None, "x", 400),
    ):
        assert_api_error(ask(client, ada_key, amount, reason), status)
    assert QuotaRequest.select().count() == 0


def test_a_user_may_hold_only_a_few_pending_requests(client, ada_key):
    for _ in range(MAX_PENDING_REQUESTS):
        assert ask(client, ada_key).status_code == 201
    assert_api_error(ask(client, ada_key), 409, "too_many_pending_requests")


# --- deciding ----------------------------------------------------------------------------------


def test_admins_list_requests_by_status_and_user(client, admin_headers, ada_key, make_user):
    ask(client, ada_key, 1)
    ask(client, ada_key, 2)
    bob_key = {"X-API-Key": issue_key(make_user("bob", "student"))}
    ask(client, bob_key, 3)
    QuotaRequest.update(status="denied").where(QuotaRequest.amount == 1).execute()

    listed = lambda query: [  # noqa: E731
        r["amount"]
        for r in client.get(f"/admin/quota-requests{query}", headers=admin_headers).get_json()[
            "quota_requests"
        ]
    ]
    assert listed("") == [3, 2, 1]  # newest first
    assert listed("?status=pending") == [3, 2]
    assert listed("?status=pending&user=ada") == [2]
    assert_api_error(
        client.get("/admin/quota-requests?status=maybe", headers=admin_headers), 400, "invalid_filter"
    )
    assert_api_error(
        client.get("/admin/quota-requests?user=ghost", headers=admin_headers), 400, "invalid_filter"
    )


def test_approve_adds_the_amount_to_this_months_budget_once(client, admin, admin_headers, ada, ada_key):
    request_id = ask(client, ada_key, 5_000).get_json()["id"]
    url = f"/admin/quota-requests/{request_id}"

    approved = client.post(f"{url}/approve", headers=admin_headers, json={"note": "fine"})
    assert approved.status_code == 200, approved.data
    body = approved.get_json()
    assert (body["status"], body["decided_by"], body["decision_note"]) == ("approved", "root", "fine")
    assert body["decided_at"]
    quota = Quota.get((Quota.user == ada.id) & (Quota.period == this_month()))
    assert quota.budget == 2 * DEFAULT + 5_000  # the row was created on demand, then topped up

    assert_api_error(client.post(f"{url}/approve", headers=admin_headers), 409, "already_decided")
    assert_api_error(client.post(f"{url}/deny", headers=admin_headers, json={"note": "no"}), 409)
    assert Quota.get_by_id(quota.id).budget == 2 * DEFAULT + 5_000
    assert QuotaRequest.get_by_id(request_id).status == "approved"

    action, before, after = the_action("quota_request.approve", f"quota_request:{request_id}")
    assert action.actor_id == admin.id
    assert (before["status"], after["status"]) == ("pending", "approved")
    assert (before["quota"]["budget"], after["quota"]["budget"]) == (2 * DEFAULT, 2 * DEFAULT + 5_000)
    mine = client.get(f"/admin/users/{ada.id}/quota", headers=admin_headers).get_json()
    assert mine["budget"] == 2 * DEFAULT + 5_000 and mine["source"] == "quota"


def test_approve_tops_up_an_existing_row_keeping_its_usage(client, admin_headers, ada, ada_key):
    Quota.create(user=ada, period=this_month(), budget=1_000, used=900, reserved=50)
    request_id = ask(client, ada_key, 500).get_json()["id"]
    assert (
        client.post(f"/admin/quota-requests/{request_id}/approve", headers=admin_headers).status_code == 200
    )
    quota = Quota.get(Quota.user == ada.id)
    assert (quota.budget, quota.used, quota.reserved) == (1_500, 900, 50)


def test_deny_needs_a_note_and_changes_no_budget(client, admin, admin_headers, ada, ada_key):
    request_id = ask(client, ada_key).get_json()["id"]
    url = f"/admin/quota-requests/{request_id}/deny"
    assert_api_error(client.post(url, headers=admin_headers), 400)
    assert_api_error(client.post(url, headers=admin_headers, json={"note": ""}), 400, "missing_field")

    denied = client.post(url, headers=admin_headers, json={"note": "use the smaller model"})
    assert denied.status_code == 200
    assert (denied.get_json()["status"], denied.get_json()["decision_note"]) == (
        "denied",
        "use the smaller model",
    )
    assert Quota.select().count() == 0
    action, before, after = the_action("quota_request.deny", f"quota_request:{request_id}")
    assert action.actor_id == admin.id and (before["status"], after["status"]) == ("pending", "denied")
    assert_api_error(client.post(url, headers=admin_headers, json={"note": "again"}), 409)


def test_deciding_an_unknown_request_is_404_and_users_cannot_decide(client, admin_headers, ada_key):
    for verb in ("approve", "deny"):
        assert_api_error(
            client.post(f"/admin/quota-requests/999999/{verb}", headers=admin_headers, json={"note": "x"}),
            404,
            "quota_request_not_found",
        )
    request_id = ask(client, ada_key).get_json()["id"]
    assert_api_error(client.post(f"/admin/quota-requests/{request_id}/approve", headers=ada_key), 403)
    assert QuotaRequest.get_by_id(request_id).status == "pending"
    assert not actions("quota_request.approve")
