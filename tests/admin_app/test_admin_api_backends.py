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
