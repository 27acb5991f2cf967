"""Path routing and model matching: the gateway's decisions that need no process."""

from __future__ import annotations

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tflow

from addons.polling import version_key
from addons.registry import BackendView, ModelView, model_aliases
from addons.replies import reply_error
from addons.routing import (
    ADMIN,
    CATALOG,
    HEALTH,
    INFERENCE,
    STORED,
    UNSERVED,
    Routing,
    oversized_headers,
    route_for,
    unserved_error,
)
from translators.errors import ANTHROPIC, OLLAMA, OPENAI, GatewayError


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
    ("POST", "/v1/responses", INFERENCE, "openai"),
    ("GET", "/v1/responses/resp_1", STORED, "openai"),
    ("DELETE", "/v1/responses/resp_1", STORED, "openai"),
    ("POST", "/v1/responses/resp_1", UNSERVED, "openai"),
    ("GET", "/v1/responses/resp_1/input_items", UNSERVED, "openai"),
    ("POST", "/v1/rerank-everything", UNSERVED, "openai"),
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
    assert version_key("0.9.2") > version_key("0.9.1-rc1")  # the pre-release's digits are not the patch's


@pytest.mark.parametrize(("method", "path", "dialect"), [
    ("POST", "/metrics", OLLAMA), ("DELETE", "/healthz", OLLAMA), ("PUT", "/v1/models", OPENAI),
    ("POST", "/v1", OPENAI), ("GET", "/api", OLLAMA), ("GET", "/v1/messages", ANTHROPIC),
    ("POST", "/v1/messages/batches", ANTHROPIC),
])
def test_the_gateways_own_paths_never_fall_through_to_the_admin_app(method, path, dialect):
    route = route_for(method, path)
    assert (route.kind, route.dialect) == (UNSERVED, dialect)


def test_head_is_answered_like_get_on_catalog_and_health_paths():
    assert route_for("HEAD", "/readyz") == route_for("GET", "/readyz")


def test_a_head_request_is_answered_without_a_body():
    flow = tflow.tflow()
    flow.request.method = "HEAD"
    reply_error(flow, OPENAI, GatewayError(405, "method HEAD not allowed"))
    assert flow.response.status_code == 405 and flow.response.content == b""


@pytest.mark.parametrize("headers", [[(b"X-Huge", b"v" * 9000)], [(b"X-Part-%d" % i, b"v" * 4000) for i in range(9)]])
def test_oversized_headers_are_refused_with_431(headers):
    error = oversized_headers(Headers([(b"Host", b"gw"), *headers]))
    assert error is not None and error.status == 431


def test_ordinary_headers_pass():
    assert oversized_headers(Headers([(b"Host", b"gw"), (b"Authorization", b"Bearer mr_abcdefgh_" + b"x" * 40),
                                      (b"Cookie", b"session=" + b"a" * 4000)])) is None


def test_a_connection_upgrade_asked_for_is_dropped_at_the_edge():
    flow = tflow.tflow()
    flow.request.headers.update({"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAM"})
    Routing("http://127.0.0.1:8001").requestheaders(flow)
    assert not {"connection", "upgrade", "http2-settings"} & {name.lower() for name in flow.request.headers}


def test_a_caller_asking_to_close_the_connection_keeps_that_wish_without_the_upgrade():
    """mitmproxy closes the connection after the answer only if the request still says `Connection: close`."""
    flow = tflow.tflow()
    flow.request.headers.update({"Connection": "Upgrade, close", "Upgrade": "websocket"})
    Routing("http://127.0.0.1:8001").requestheaders(flow)
    assert flow.request.headers.get_all("Connection") == ["close"] and "Upgrade" not in flow.request.headers
