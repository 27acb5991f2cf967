"""The dashboards as a browser sees them: who may see which page, CSRF on every form, escaping, the
approval flows, the audit pages and exports, and charts fed by the rollups."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from addons.record import write_audit
from store.models import (
    AdminAction,
    ApiKey,
    Backend,
    KeyRequest,
    QueueSnapshot,
    Quota,
    QuotaRequest,
    Request,
    RequestBody,
    User,
    utcnow,
)

ADMIN_PAGES = ["/admin", "/admin/console/backends", "/admin/console/users", "/admin/console/keys",
               "/admin/console/approvals", "/admin/console/queue", "/admin/console/audit",
               "/admin/console/actions", "/admin/console/audit/export.csv", "/admin/console/audit/export.json"]
ADMIN_API = ["/admin/backends", "/admin/queue", "/admin/users", "/admin/keys", "/admin/quota-requests",
             "/admin/audit/search"]
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'


def _audit_row(request_id: str, user: User | None, prompt: str = "hello", answer: str = "hi there",
               status: int = 200, at: dt.datetime | None = None, model: str = "llama3.2") -> None:
    row = {
        "request_id": request_id, "user": user.id if user else None, "api_key": None,
        "endpoint": "/v1/chat/completions", "client_dialect": "openai", "backend_dialect": "ollama", "model": model,
        "backend": None, "status": status, "stream": False, "queue_ms": 1500.0, "ttft_ms": 20.0, "total_ms": 3400.0,
        "prompt_tokens": 1000, "completion_tokens": 234, "client_address": "10.0.0.9", "error": "",
        "created_at": at or utcnow(),
    }
    write_audit({"row": row, "body": prompt.encode(), "delivered": b"{}", "images": [], "media_types": [],
                 "answer_text": answer, "validation": "", "artifact_root": "unused"})


@pytest.fixture(autouse=True)
def fresh_access_request_throttle(app):
    """The app is shared by the run's tests; each starts with no access requests counted."""
    import threading

    from admin_app.public import THROTTLE_EXTENSION
    from scheduler.failures import FailureBudget
    app.extensions[THROTTLE_EXTENSION] = (FailureBudget(5, 3600), threading.Lock())


@pytest.fixture
def logged_in(client, make_user, log_in):
    def as_role(role: str, username: str | None = None):
        user = make_user(username or f"a-{role}", role)
        assert log_in(user.username).status_code == 302
        return user
    return as_role


def _form_token(client, path: str, csrf_token) -> str:
    return csrf_token(client.get(path).data)


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_a_visitor_is_sent_to_log_in_from_every_admin_page(client, path):
    response = client.get(path)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize("role", ["student", "staff", "faculty"])
def test_a_non_admin_session_gets_403_on_every_admin_page_and_admin_api(client, logged_in, role):
    logged_in(role)
    for path in ADMIN_PAGES:
        response = client.get(path)
        assert response.status_code == 403, path
        assert "for admins" in response.get_data(as_text=True)
    for path in ADMIN_API:
        assert client.get(path).status_code == 403, path
    backend = Backend.create(name="b1", url="http://10.0.0.1:1", engine="ollama")
    token = csrf_token_of_dashboard(client)
    for path in (f"/admin/console/backends/{backend.id}/disable", "/admin/console/users",
                 f"/admin/console/users/{User.select().first().id}"):
        assert client.post(path, data={"csrf_token": token, "role": "admin"}).status_code == 403, path
    assert Backend.get_by_id(backend.id).enabled
    assert not User.select().where(User.role == "admin").exists()


def csrf_token_of_dashboard(client) -> str:
    from tests.admin_app.conftest import csrf_token_of
    return csrf_token_of(client.get("/dashboard").data)


def test_an_admin_sees_every_admin_page(client, logged_in):
    admin = logged_in("admin", "root")
    Backend.create(name="gpu-1", url="http://10.0.0.1:11434", engine="ollama", health="healthy")
    _audit_row("req-1", admin)
    for path in ADMIN_PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        response.get_data()  # an export streams: read it while its request context lives
    assert "All 1 backend healthy" in client.get("/admin").get_data(as_text=True)
    assert "req-1" in client.get("/admin/console/audit").get_data(as_text=True)


def test_an_admin_form_posted_without_its_csrf_token_is_refused(client, logged_in):
    logged_in("admin", "root")
    response = client.post("/admin/console/backends", data={"name": "b1", "url": "http://10.0.0.1:1",
                                                             "engine": "ollama"})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert not Backend.select().exists()


def test_an_admin_registers_drains_and_reenables_a_backend_and_each_action_is_logged(client, logged_in, csrf_token):
    admin = logged_in("admin", "root")
    token = _form_token(client, "/admin/console/backends", csrf_token)
    response = client.post("/admin/console/backends", data={
        "csrf_token": token, "name": "gpu-9", "url": "http://10.0.0.9:8000", "engine": "vllm", "max_concurrent": "6"})
    assert response.status_code == 303
    backend = Backend.get(Backend.name == "gpu-9")
    assert backend.max_concurrent == 6
    client.post(f"/admin/console/backends/{backend.id}/drain", data={"csrf_token": token})
    assert Backend.get_by_id(backend.id).draining
    assert "draining" in client.get("/admin/console/backends").get_data(as_text=True)
    client.post(f"/admin/console/backends/{backend.id}/enable", data={"csrf_token": token})
    assert not Backend.get_by_id(backend.id).draining
    actions = [a.action for a in AdminAction.select().where(AdminAction.actor == admin.id).order_by(AdminAction.id)]
    assert actions == ["backend.register", "backend.drain", "backend.enable"]
    log = client.get("/admin/console/actions").get_data(as_text=True)
    assert "backend.drain" in log and "&#34;draining&#34;: true" in log


def test_a_public_key_request_approved_by_an_admin_becomes_a_user_who_can_log_in(client, logged_in, csrf_token,
                                                                                   log_in):
    token = _form_token(client, "/request-access", csrf_token)
    response = client.post("/request-access", data={
        "csrf_token": token, "username": "newbie", "email": "newbie@example.edu", "role": "staff",
        "reason": "thesis work", "password": "newbie-password"})
    assert response.status_code == 303
    assert KeyRequest.get(KeyRequest.username == "newbie").status == "pending"
    assert log_in("newbie", "newbie-password").status_code == 200  # not yet a user

    logged_in("admin", "root")
    assert "newbie@example.edu" in client.get("/admin/console/approvals").get_data(as_text=True)
    assert '<span class="badge text-bg-danger pending-badge">1</span>' in client.get("/admin").get_data(as_text=True)
    row = KeyRequest.get(KeyRequest.username == "newbie")
    token = _form_token(client, "/admin/console/approvals", csrf_token)
    client.post(f"/admin/console/key-requests/{row.id}/approve", data={"csrf_token": token, "role": "student",
                                                                       "note": "welcome"})
    user = User.get(User.username == "newbie")
    assert (user.role, user.email, KeyRequest.get_by_id(row.id).status) == ("student", "newbie@example.edu",
                                                                              "approved")
    client.post("/logout", data={"csrf_token": token})
    assert log_in("newbie", "newbie-password").status_code == 302


def test_a_key_request_for_a_taken_username_is_refused(client, make_user, csrf_token):
    make_user("ada")
    token = _form_token(client, "/request-access", csrf_token)
    response = client.post("/request-access", data={
        "csrf_token": token, "username": "ada", "email": "a@example.edu", "role": "student", "reason": "x",
        "password": "long-enough"})
    assert response.status_code == 409 and not KeyRequest.select().exists()


def test_an_admin_approves_a_quota_request_with_another_amount(client, logged_in, make_user, csrf_token):
    ada = make_user("ada")
    asked = QuotaRequest.create(user=ada, amount=50_000, reason="exam week")
    logged_in("admin", "root")
    token = _form_token(client, "/admin/console/approvals", csrf_token)
    client.post(f"/admin/console/quota-requests/{asked.id}/approve", data={"csrf_token": token, "amount": "20000",
                                                                          "note": "half"})
    decided = QuotaRequest.get_by_id(asked.id)
    assert (decided.status, decided.amount, decided.decision_note) == ("approved", 20_000, "half")
    assert Quota.get(Quota.user == ada.id).budget == 100_000 + 20_000


def test_a_denial_needs_a_note(client, logged_in, make_user, csrf_token):
    asked = QuotaRequest.create(user=make_user("ada"), amount=5, reason="x")
    logged_in("admin", "root")
    token = _form_token(client, "/admin/console/approvals", csrf_token)
    client.post(f"/admin/console/quota-requests/{asked.id}/deny", data={"csrf_token": token, "note": ""})
    assert QuotaRequest.get_by_id(asked.id).status == "pending"


def test_an_admin_changes_a_users_settings_and_resets_a_password(client, logged_in, make_user, csrf_token, log_in):
    ada = make_user("ada")
    logged_in("admin", "root")
    token = _form_token(client, "/admin/console/users", csrf_token)
    client.post(f"/admin/console/users/{ada.id}", data={
        "csrf_token": token, "role": "faculty", "weight_override": "4.5", "token_budget_override": "",
        "rpm_override": "120", "max_concurrent_override": "2", "max_queued_override": "500", "active": "on"})
    ada = User.get_by_id(ada.id)
    assert (ada.role, ada.weight_override, ada.rpm_override, ada.max_concurrent_override, ada.max_queued_override) \
        == ("faculty", 4.5, 120, 2, 500)
    assert "ada" in client.get("/admin/console/users?q=ad").get_data(as_text=True)
    client.post(f"/admin/console/users/{ada.id}/password", data={"csrf_token": token, "password": "brand-new-pw"})
    client.post("/logout", data={"csrf_token": token})
    assert log_in("ada", "brand-new-pw").status_code == 302


def test_an_admin_revokes_any_users_key(client, logged_in, make_user, csrf_token):
    from admin_app.accounts import create_key
    key, _ = create_key(make_user("ada"), "laptop")
    logged_in("admin", "root")
    page = client.get("/admin/console/keys").get_data(as_text=True)
    assert f"mr_{key.prefix}_" in page and "ada" in page
    client.post(f"/admin/console/keys/{key.id}/revoke", data={"csrf_token": csrf_token(page.encode())})
    assert ApiKey.get_by_id(key.id).status == "revoked"


def test_a_hostile_prompt_and_answer_are_shown_escaped(client, logged_in, make_user):
    _audit_row("evil-1", make_user("mallory"), prompt=HOSTILE, answer=HOSTILE)
    logged_in("admin", "root")
    page = client.get("/admin/console/audit/evil-1").get_data(as_text=True)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in page


def test_the_audit_search_filters_by_user_and_time_and_pages_link_to_the_detail(client, logged_in, make_user):
    ada, bob = make_user("ada"), make_user("bob")
    now = utcnow()
    _audit_row("ada-old", ada, at=now - dt.timedelta(days=3))
    _audit_row("ada-new", ada, at=now - dt.timedelta(hours=1))
    _audit_row("bob-new", bob, at=now - dt.timedelta(hours=1))
    logged_in("admin", "root")
    since = (now - dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S")
    page = client.get(f"/admin/console/audit?user=ada&since={since}").get_data(as_text=True)
    assert "ada-old" in page and "ada-new" in page and "bob-new" not in page
    assert "2 matching requests" in page
    default = client.get("/admin/console/audit").get_data(as_text=True)
    assert "ada-old" not in default and "bob-new" in default  # the last 24 hours unless told otherwise
    assert client.get("/admin/console/audit?user=nobody").status_code == 400


def test_audit_exports_stream_every_matching_row_without_a_content_length(client, logged_in, make_user,
                                                                           monkeypatch):
    import admin_app.console
    monkeypatch.setattr(admin_app.console, "EXPORT_BATCH", 2)  # several batches
    ada = make_user("ada")
    for i in range(5):
        _audit_row(f"r{i}", ada)
    logged_in("admin", "root")
    response = client.get("/admin/console/audit/export.csv?user=ada")
    assert response.status_code == 200 and "Content-Length" not in response.headers
    lines = response.get_data(as_text=True).strip().splitlines()
    assert lines[0].startswith("request_id,created_at,user") and len(lines) == 6
    rows = json.loads(client.get("/admin/console/audit/export.json?user=ada").get_data(as_text=True))
    assert sorted(row["request_id"] for row in rows) == [f"r{i}" for i in range(5)]
    assert AdminAction.select().where(AdminAction.action == "audit.export").count() == 2


def test_the_dashboard_shows_usage_from_the_rollups_and_own_recent_requests(client, logged_in):
    ada = logged_in("student", "ada")
    _audit_row("ada-1", ada, model="qwen2.5")
    RequestBody.delete().execute()
    Request.delete().execute()  # the charts read the rollups, not the audit table
    page = client.get("/dashboard").get_data(as_text=True)
    assert "qwen2.5" in page and "1.2k" in page  # 1 234 tokens, for people
    _audit_row("ada-2", ada, status=503)
    page = client.get("/dashboard").get_data(as_text=True)
    assert "ada" in page and ">503<" in page and "1.5 s" in page and "3.4 s" in page


def test_the_dashboard_shows_where_my_requests_stand_in_the_queue(client, logged_in):
    ada = logged_in("student", "ada")
    QueueSnapshot.create(gateway="gw-1", taken_at=utcnow(), data=json.dumps({
        "waiting": 3, "in_flight": 1, "backends": [], "users": [],
        "queues": [{"user_id": ada.id, "model": "llama3.2", "waiting": 3, "in_flight": 1, "deficit": 0.0,
                    "oldest_wait_s": 2.5}]}))
    page = client.get("/dashboard").get_data(as_text=True)
    assert "Nothing of yours is running or waiting" not in page and "2.5 s" in page


def test_the_status_page_shows_queue_and_users_active_today(client, make_user):
    _audit_row("r1", make_user("ada"))
    QueueSnapshot.create(gateway="gw-1", taken_at=utcnow(), data=json.dumps({
        "waiting": 7, "in_flight": 2, "backends": [], "users": [], "queues": []}))
    page = client.get("/").get_data(as_text=True)
    assert 'aria-labelledby="stat-waiting-label">7<' in page
    assert 'aria-labelledby="stat-active-label">1<' in page
    assert "Tokens per second, last hour" in page and "<rect" in page


def test_session_cookies_are_http_only_same_site_and_secure_outside_development(shared_apps, database_kind):
    from admin_app import create_app
    app = create_app({"DATABASE_URL": shared_apps.app(database_kind).config["DATABASE_URL"], "SECRET_KEY": "s"})
    assert app.config["SESSION_COOKIE_SECURE"] and app.config["SESSION_COOKIE_HTTPONLY"]
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_pages_load_bootstrap_from_the_installed_package_not_a_cdn(client):
    html = client.get("/").get_data(as_text=True)
    assert "/bootstrap/static/css/bootstrap.min.css" in html and "cdn" not in html.lower()
    assert client.get("/bootstrap/static/css/bootstrap.min.css").status_code == 200


@pytest.mark.parametrize("value, shown", [(0, "0"), (999, "999"), (1234, "1.2k"), (999_950, "1M"),
                                          (3_400_000, "3.4M"), (10**12, "1T"), (None, "—")])
def test_numbers_are_shown_for_people(value, shown):
    from admin_app.presentation import human_count
    assert human_count(value) == shown


@pytest.mark.parametrize("ms, shown", [(12, "12 ms"), (3400, "3.4 s"), (150_000, "2.5 min"), (None, "—")])
def test_durations_are_shown_for_people(ms, shown):
    from admin_app.presentation import human_ms
    assert human_ms(ms) == shown


def test_the_backends_page_charts_kv_cache_and_each_gpu_from_telemetry(client, logged_in):
    from store.models import TelemetrySample
    logged_in("admin", "root")
    backend = Backend.create(name="gpu-node", url="http://10.0.0.1:8000", engine="vllm", health="healthy")
    for minutes_ago, load in ((10, 40), (5, 90)):
        TelemetrySample.create(backend=backend, taken_at=utcnow() - dt.timedelta(minutes=minutes_ago),
                               kv_cache_usage=load / 100, gpu_utilization=load, details=json.dumps({"gpus": [
                                   {"index": 0, "name": "H200", "utilization_gpu_pct": load,
                                    "memory_used_bytes": 70 * 10**9, "memory_total_bytes": 141 * 10**9,
                                    "temperature_c": 61},
                                   {"index": 1, "name": "H200", "utilization_gpu_pct": load // 2,
                                    "memory_used_bytes": 10**9, "memory_total_bytes": 141 * 10**9,
                                    "temperature_c": 50}]}))
    page = client.get("/admin/console/backends").get_data(as_text=True)
    assert "KV cache use (%), last hour" in page and "<title>" in page
    assert "GPU 0 (H200) utilisation" in page and "GPU 1 (H200) utilisation" in page
    assert "now 90%, memory 70GB of 141GB, 61 °C" in page


def test_access_requests_from_one_address_are_bounded(client, csrf_token):
    token = _form_token(client, "/request-access", csrf_token)
    statuses = [client.post("/request-access", data={
        "csrf_token": token, "username": f"someone{i}", "email": f"s{i}@example.edu", "role": "student",
        "reason": "x", "password": "long-enough"}).status_code for i in range(7)]
    assert statuses == [303] * 5 + [429] * 2
    assert KeyRequest.select().count() == 5


def _console_routes(app) -> list[tuple[str, str]]:
    """(method, URL) of every admin console route, with made-up ids."""
    values = {"backend_id": 1, "action": "drain", "user_id": 1, "key_id": 1, "request_id": 1,
              "decision": "approve", "fmt": "csv", "alias": "coder"}
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console."):
            url = rule.build({name: values[name] for name in rule.arguments})[1]
            routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_every_console_route_refuses_a_student_and_sends_a_visitor_to_log_in(app, client, logged_in, csrf_token):
    routes = _console_routes(app)
    assert len(routes) >= 18  # the routes come from the URL map: a new one is checked too
    login_token = _form_token(client, "/login", csrf_token)
    for method, url in routes:
        response = client.open(url, method=method, data={"csrf_token": login_token})
        assert response.status_code == 302 and "/login" in response.headers["Location"], (method, url)
    logged_in("student")
    token = _form_token(client, "/dashboard", csrf_token)
    for method, url in routes:
        assert client.open(url, method=method, data={"csrf_token": token}).status_code == 403, (method, url)


@pytest.mark.parametrize("path", ADMIN_API)
def test_the_admin_api_answers_401_without_a_key_or_session(client, path):
    response = client.get(path)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "missing_api_key"


def test_the_backends_page_shows_each_gateways_breaker_for_the_backend(client, logged_in):
    logged_in("admin", "root")
    backend = Backend.create(name="flaky-node", url="http://10.0.0.2:8000", engine="vllm", health="healthy")
    for gateway, breaker in (("gw-1", "open"), ("gw-2", "closed"), ("gw-3", "open")):
        QueueSnapshot.create(gateway=gateway, taken_at=utcnow(), data=json.dumps({
            "waiting": 0, "in_flight": 0, "users": [], "queues": [],
            "backends": [{"backend_id": backend.id, "in_flight": 0, "max_concurrent": 4, "accepts_work": True,
                          "resident": [], "breaker": breaker}]}))
    page = client.get("/admin/console/backends").get_data(as_text=True)
    assert "closed on 1 gateway," in page and "open on 2 gateways" in page
