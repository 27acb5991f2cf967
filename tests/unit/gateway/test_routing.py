"""Path routing and model matching: the gateway's decisions that need no process."""

from __future__ import annotations

import pytest

from addons.local import version_key
from addons.registry import BackendView, ModelView, model_aliases
from addons.routing import ADMIN, CATALOG, HEALTH, INFERENCE, UNSERVED, route_for, unserved_error


@pytest.mark.parametrize(("method", "path", "kind", "dialect"), [
    ("POST", "/v1/chat/completions", INFERENCE, "openai"),
    ("POST", "/api/generate", INFERENCE, "ollama"),
    ("GET", "/v1/models", CATALOG, "openai"),
    ("GET", "/api/tags", CATALOG, "ollama"),
    ("POST", "/api/show", CATALOG, "ollama"),
    ("GET", "/readyz", HEALTH, None),
    ("GET", "/admin/backends", ADMIN, None),
    ("GET", "/", ADMIN, None),
    ("GET", "/api/chat", UNSERVED, "ollama"),
    ("POST", "/v1/responses", UNSERVED, "openai"),
])
def test_paths_route_to_who_answers_them(method, path, kind, dialect):
    route = route_for(method, path)
    assert (route.kind, route.dialect) == (kind, dialect)


def test_health_paths_need_no_key_and_api_paths_do():
    assert not route_for("GET", "/healthz").needs_key
    assert route_for("GET", "/api/version").needs_key


def test_wrong_method_on_a_served_path_is_405_with_allow():
    error = unserved_error("GET", "/api/chat")
    assert error.status == 405 and error.headers == {"Allow": "POST"}
    assert unserved_error("POST", "/api/pull").status == 404


def test_ollama_model_names_match_with_or_without_latest():
    assert model_aliases("llama3.2") == {"llama3.2", "llama3.2:latest"}
    assert model_aliases("llama3.2:latest") == {"llama3.2", "llama3.2:latest"}
    assert model_aliases("qwen2.5:7b") == {"qwen2.5:7b"}


def test_a_backend_answers_with_its_own_spelling_of_the_model():
    view = BackendView(id=1, name="n", url="u", engine="ollama", max_concurrent=1, enabled=True, draining=False,
                       priority=0, healthy=True, models={"llama3.2:latest": ModelView("llama3.2:latest")})
    assert view.served_name("llama3.2") == "llama3.2:latest"
    assert view.served_name("mistral") is None


def test_draining_or_unhealthy_backends_take_no_requests():
    view = BackendView(id=1, name="n", url="u", engine="vllm", max_concurrent=1, enabled=True, draining=False,
                       priority=0, healthy=True)
    assert view.accepts_requests
    view.draining = True
    assert not view.accepts_requests
    view.draining, view.healthy = False, False
    assert not view.accepts_requests


def test_versions_compare_by_number_not_text():
    assert version_key("0.10.1") > version_key("0.9.7")
    assert min(["0.12.0", "0.9.1-rc1"], key=version_key) == "0.9.1-rc1"
