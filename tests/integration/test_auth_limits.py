"""API key failure budgets through a real gateway: wrong secrets for one prefix end in 429, its holder still passes."""

from __future__ import annotations

import secrets

import httpx
import pytest

from sim.stack import free_port, start_stack
from store import api_keys


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("auth-limits")
    env = {"DATABASE_URL": f"sqlite:///{work_dir / 'mindrouter.db'}", "SECRET_KEY": secrets.token_hex(16)}
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    stack = start_stack(work_dir, env, ports, ("auth_failures_per_key_prefix=3", "auth_failures_per_client=0"),
                        key_users=("admin", "student1"))
    yield stack
    stack.stop()


def models(stack, key: str) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_wrong_secrets_for_a_prefix_end_in_429_while_its_verified_holder_still_passes(stack):
    key = stack.keys["student1"]
    assert models(stack, key).status_code == 200
    wrong = [f"mr_{api_keys.key_prefix(key)}_{secrets.token_hex(20)}" for _ in range(4)]
    assert [models(stack, w).status_code for w in wrong[:3]] == [401, 401, 401]
    refused = models(stack, wrong[3])
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_failed_key_checks"
    assert models(stack, key).status_code == 200
