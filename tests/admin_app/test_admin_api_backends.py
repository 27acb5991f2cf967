"""Registering, listing, enabling and disabling backends through the admin API, with the audit trail."""

from __future__ import annotations

import json

import pytest

from admin_app.backends import RegistrationError, validate_registration
from store.models import AdminAction, Backend, BackendModel

GPU1 = {
    "name": "gpu1",
    "url": "http://gpu1:11434",
    "engine": "ollama",
    "max_concurrent": 4,
    "gpu_memory_gb": 80,
}


@pytest.fixture
def register(client, admin_headers):
    def register(body):
        return client.post("/admin/backends/register", headers=admin_headers, json=body)

    return register


def test_register_creates_the_backend_and_answers_201_with_it(register, admin):
    response = register({**GPU1, "url": "http://gpu1:11434/"})
    assert response.status_code == 201, response.data
    body = response.get_json()
    assert body["name"] == "gpu1" and body["engine"] == "ollama"
    assert body["url"] == "http://gpu1:11434"  # trailing slash dropped, so paths join cleanly
    assert body["max_concurrent"] == 4 and body["gpu_memory_gb"] == 80.0
    assert body["enabled"] is True and body["draining"] is False and body["health"] == "unknown"
    assert body["models"] == []
    assert Backend.get_by_id(body["id"]).name == "gpu1"


def test_register_writes_an_admin_action(register, admin):
    backend = register(GPU1).get_json()
    action = AdminAction.get(AdminAction.action == "backend.register")
    assert action.actor_id == admin.id
    assert action.target == f"backend:{backend['id']}"
    assert json.loads(action.after)["name"] == "gpu1"


def test_register_applies_defaults_for_optional_fields(register):
    body = register({"name": "v1", "url": "https://vllm.example:8000", "engine": "vllm"}).get_json()
    assert body["max_concurrent"] == 4 and body["gpu_memory_gb"] is None


@pytest.mark.parametrize("missing", ["name", "url", "engine"])
def test_a_registration_without_a_required_field_is_400_naming_it(missing):
    with pytest.raises(RegistrationError, match=missing) as raised:
        validate_registration({k: v for k, v in GPU1.items() if k != missing})
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("engine", "tgi"),
        ("url", "ftp://gpu1:11434"),
        ("url", "gpu1:11434"),
        ("url", "http://gpu1:notaport"),
        ("url", "http://gpu1:11434/?x=1"),
        ("max_concurrent", 0),
        ("max_concurrent", -2),
        ("max_concurrent", "4"),
        ("max_concurrent", True),
        ("max_concurrent", 2.5),
        ("max_concurrent", 10**12),
        ("gpu_memory_gb", -1),
        ("gpu_memory_gb", "80GB"),
        ("gpu_memory_gb", float("inf")),
        ("name", ""),
        ("name", 42),
        ("name", "x" * 200),
        ("nmae", "typo"),
    ],
)
def test_a_registration_with_a_bad_value_is_refused_naming_the_field(field, value):
    with pytest.raises(RegistrationError, match=field) as raised:
        validate_registration({**GPU1, field: value})
    assert raised.value.status in (400, 422)


def test_register_with_a_bad_value_is_422_and_stores_nothing(register):
    response = register({**GPU1, "engine": "tgi"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "engine"
    assert "ollama, vllm" in error["message"]
    assert Backend.select().count() == 0


def test_register_without_a_required_field_is_400(register):
    response = register({"name": "gpu1", "engine": "ollama"})
    assert response.status_code == 400
    assert "'url'" in response.get_json()["error"]["message"]


def test_register_with_a_body_that_is_not_a_json_object_is_400(client, admin_headers):
    not_json = client.post("/admin/backends/register", headers=admin_headers, data="name=gpu1")
    assert not_json.status_code == 400
    a_list = client.post("/admin/backends/register", headers=admin_headers, json=[GPU1])
    assert a_list.status_code == 400
    assert "JSON object" in a_list.get_json()["error"]["message"]


def test_register_a_duplicate_name_is_409(register):
    first = register(GPU1).get_json()
    response = register({**GPU1, "url": "http://other:11434"})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "backend_exists"
    assert str(first["id"]) in response.get_json()["error"]["message"]
    assert Backend.select().count() == 1
    assert AdminAction.select().where(AdminAction.action == "backend.register").count() == 1


def test_list_shows_health_state_and_models_with_residency(client, admin_headers, register):
    gpu1 = register(GPU1).get_json()
    register({"name": "v1", "url": "http://v1:8000", "engine": "vllm"})
    Backend.update(health="healthy", draining=True).where(Backend.id == gpu1["id"]).execute()
    BackendModel.create(backend=gpu1["id"], name="qwen2.5:7b", resident=False)
    BackendModel.create(
        backend=gpu1["id"], name="llama3.2:latest", resident=True, capabilities='["completion"]'
    )

    response = client.get("/admin/backends", headers=admin_headers)
    assert response.status_code == 200
    backends = response.get_json()["backends"]
    assert [b["name"] for b in backends] == ["gpu1", "v1"]
    first = backends[0]
    assert first["health"] == "healthy" and first["enabled"] is True and first["draining"] is True
    assert [(m["name"], m["resident"]) for m in first["models"]] == [
        ("llama3.2:latest", True),
        ("qwen2.5:7b", False),
    ]
    assert first["models"][0]["capabilities"] == ["completion"]
    assert backends[1]["models"] == []


def test_disable_then_enable_flips_the_flag_and_records_both(client, admin_headers, register, admin):
    backend_id = register(GPU1).get_json()["id"]

    disabled = client.post(f"/admin/backends/{backend_id}/disable", headers=admin_headers)
    assert disabled.status_code == 200 and disabled.get_json()["enabled"] is False
    assert Backend.get_by_id(backend_id).enabled is False

    enabled = client.post(f"/admin/backends/{backend_id}/enable", headers=admin_headers)
    assert enabled.status_code == 200 and enabled.get_json()["enabled"] is True
    assert Backend.get_by_id(backend_id).enabled is True

    actions = list(
        AdminAction.select().where(AdminAction.target == f"backend:{backend_id}").order_by(AdminAction.id)
    )
    assert [a.action for a in actions] == ["backend.register", "backend.disable", "backend.enable"]
    assert all(a.actor_id == admin.id for a in actions)
    assert (json.loads(actions[1].before)["enabled"], json.loads(actions[1].after)["enabled"]) == (
        True,
        False,
    )
    assert (json.loads(actions[2].before)["enabled"], json.loads(actions[2].after)["enabled"]) == (
        False,
        True,
    )


def test_disable_leaves_what_the_gateway_wrote_alone(client, admin_headers, register):
    backend_id = register(GPU1).get_json()["id"]
    Backend.update(health="unhealthy", last_error="connection refused").where(
        Backend.id == backend_id
    ).execute()
    client.post(f"/admin/backends/{backend_id}/disable", headers=admin_headers)
    backend = Backend.get_by_id(backend_id)
    assert (backend.health, backend.last_error) == ("unhealthy", "connection refused")


@pytest.mark.parametrize("verb", ["enable", "disable"])
def test_enable_or_disable_an_unknown_backend_is_404(client, admin_headers, verb):
    response = client.post(f"/admin/backends/999/{verb}", headers=admin_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "backend_not_found"
    assert not AdminAction.select().where(AdminAction.action.startswith("backend.")).exists()


def test_a_registration_may_name_its_node_agent_and_gpus(register):
    body = register({**GPU1, "telemetry_url": "http://gpu1:8007/", "gpu_indices": [1, 0]}).get_json()
    assert body["telemetry_url"] == "http://gpu1:8007" and body["gpu_indices"] == [0, 1]
    with pytest.raises(RegistrationError, match="gpu_indices"):
        validate_registration({**GPU1, "gpu_indices": "0,1"})


def test_drain_refresh_and_enable_change_only_their_columns_and_are_audited(register, client, admin_headers):
    backend = register(GPU1).get_json()
    drained = client.post(f"/admin/backends/{backend['id']}/drain", headers=admin_headers).get_json()
    assert drained["draining"] is True and drained["enabled"] is True
    refreshed = client.post(f"/admin/backends/{backend['id']}/refresh", headers=admin_headers).get_json()
    assert refreshed["refresh_requested_at"] is not None and refreshed["draining"] is True
    enabled = client.post(f"/admin/backends/{backend['id']}/enable", headers=admin_headers).get_json()
    assert enabled["draining"] is False and enabled["enabled"] is True
    actions = [a.action for a in AdminAction.select().order_by(AdminAction.id)]
    assert actions[-3:] == ["backend.drain", "backend.refresh", "backend.enable"]
    assert client.post("/admin/backends/999/drain", headers=admin_headers).status_code == 404


def test_the_queue_shows_each_gateways_live_snapshot_with_usernames(client, admin_headers, admin):
    from store.models import QueueSnapshot, User, utcnow

    student = User.create(username="sam", role="student")
    snapshot = {"waiting": 2, "in_flight": 1,
                "queues": [{"user_id": student.id, "model": "llama3.2", "waiting": 2, "in_flight": 1,
                            "deficit": 0.0, "oldest_wait_s": 1.5}],
                "users": [{"user_id": student.id, "weight": 1.0, "burst_credit": 250.0, "debt": 0.0}],
                "backends": [{"backend_id": 1, "in_flight": 1, "max_concurrent": 4}]}
    QueueSnapshot.create(gateway="gw-1:8000", taken_at=utcnow(), data=json.dumps(snapshot))
    QueueSnapshot.create(gateway="gw-stopped:8000", taken_at=utcnow().replace(year=2020), data=json.dumps(snapshot))
    body = client.get("/admin/queue", headers=admin_headers).get_json()
    assert [g["gateway"] for g in body["gateways"]] == ["gw-1:8000"]
    (row,) = body["gateways"][0]["queues"]
    assert (row["username"], row["waiting"], row["burst_credit"], row["oldest_wait_s"]) == ("sam", 2, 250.0, 1.5)
