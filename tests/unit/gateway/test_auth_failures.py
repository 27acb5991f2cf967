"""API key checks: Argon2 in a pool of its own, and a failure budget per key prefix and per client address."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from types import SimpleNamespace

import pytest
from mitmproxy.test import taddons, tflow

import addons.auth as auth_module
from addons.auth import Auth, KeyCache, Principal
from addons.context import CONTEXT_KEY, RequestContext, Route
from store import api_keys
from translators.errors import GatewayError


class KeyRows(dict):
    """Key rows by prefix, and the thread name of every Argon2 check made."""

    argon2_threads: list[str]


@pytest.fixture
def key_rows(monkeypatch):
    """Key rows by prefix as the database would answer them; records the thread of every Argon2 check."""
    rows = KeyRows()
    argon2_threads: list[str] = []
    real_verify = api_keys.verify_key

    def verify_key(key_hash: str, key: str) -> bool:
        argon2_threads.append(threading.current_thread().name)
        return real_verify(key_hash, key)

    monkeypatch.setattr(auth_module, "key_by_prefix", rows.get)
    monkeypatch.setattr(api_keys, "verify_key", verify_key)
    rows.argon2_threads = argon2_threads
    return rows


def add_key(rows) -> str:
    key, prefix = api_keys.generate_key()
    user = SimpleNamespace(id=1, username="student1", role="student", weight=1.0, active=True, rpm_override=None,
                           max_concurrent_override=None, max_queued_override=None, token_budget_override=None)
    rows[prefix] = SimpleNamespace(id=len(rows) + 1, prefix=prefix, key_hash=api_keys.hash_key(key), status="active",
                                   expires_at=None, rpm_override=None, user=user)
    return key


def wrong_secret(key: str) -> str:
    prefix = api_keys.key_prefix(key)
    return f"mr_{prefix}_{secrets.token_hex(20)}"


def run(scenario):
    return asyncio.run(scenario())


def test_argon2_runs_in_its_own_pool_not_the_default_one(key_rows):
    key = add_key(key_rows)
    keys = KeyCache()

    async def scenario():
        return await keys.principal_for(key, "192.0.2.1")

    assert isinstance(run(scenario), Principal)
    assert len(key_rows.argon2_threads) == 1 and key_rows.argon2_threads[0].startswith("argon2")


def test_failed_checks_beyond_the_prefix_budget_get_429_without_argon2(key_rows):
    key = add_key(key_rows)
    keys = KeyCache(failures_per_prefix=3, failures_per_client=0, failure_window_s=60)

    async def scenario():
        for n in range(3):
            assert await keys.principal_for(wrong_secret(key), f"192.0.2.{n}") == "invalid API key"
        with pytest.raises(GatewayError) as refused:
            await keys.principal_for(wrong_secret(key), "192.0.2.99")
        return refused.value

    refused = run(scenario)
    assert refused.status == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert len(key_rows.argon2_threads) == 3


def test_failed_checks_beyond_the_client_budget_get_429_without_argon2(key_rows):
    wrong_keys = [wrong_secret(add_key(key_rows)) for _ in range(4)]
    keys = KeyCache(failures_per_prefix=0, failures_per_client=3, failure_window_s=60)

    async def scenario():
        for key in wrong_keys[:3]:
            assert await keys.principal_for(key, "198.51.100.7") == "invalid API key"
        with pytest.raises(GatewayError) as refused:
            await keys.principal_for(wrong_keys[3], "198.51.100.7")
        # Another address is not held back by this one's failures.
        assert await keys.principal_for(wrong_keys[3], "198.51.100.8") == "invalid API key"
        return refused.value

    assert run(scenario).status == 429
    assert len(key_rows.argon2_threads) == 4


def test_unknown_prefixes_count_against_the_client_too(key_rows):
    keys = KeyCache(failures_per_prefix=0, failures_per_client=2, failure_window_s=60)
    unknown = [api_keys.generate_key()[0] for _ in range(3)]

    async def scenario():
        for key in unknown[:2]:
            assert await keys.principal_for(key, "198.51.100.9") == "invalid API key"
        with pytest.raises(GatewayError):
            await keys.principal_for(unknown[2], "198.51.100.9")

    run(scenario)


def test_a_verified_key_still_passes_while_its_prefix_is_hammered(key_rows):
    key = add_key(key_rows)
    keys = KeyCache(failures_per_prefix=3, failures_per_client=0, failure_window_s=60)

    async def scenario():
        assert isinstance(await keys.principal_for(key, "192.0.2.1"), Principal)
        refusals = 0
        for n in range(10):
            try:
                await keys.principal_for(wrong_secret(key), f"203.0.113.{n}")
            except GatewayError:
                refusals += 1
        return refusals, await keys.principal_for(key, "192.0.2.1")

    refusals, outcome = run(scenario)
    assert refusals == 7 and isinstance(outcome, Principal)


def test_a_correct_key_does_not_use_up_the_budget(key_rows):
    key = add_key(key_rows)
    keys = KeyCache(failures_per_prefix=1, failures_per_client=1, failure_window_s=60)

    async def scenario():
        assert isinstance(await keys.principal_for(key, "192.0.2.1"), Principal)
        assert await keys.principal_for(wrong_secret(key), "192.0.2.1") == "invalid API key"
        with pytest.raises(GatewayError):
            await keys.principal_for(wrong_secret(key), "192.0.2.1")

    run(scenario)


def test_wrong_keys_arriving_together_cannot_slip_past_the_budget(key_rows):
    key = add_key(key_rows)
    keys = KeyCache(failures_per_prefix=3, failures_per_client=0, failure_window_s=60)

    async def scenario():
        return await asyncio.gather(*(keys.principal_for(wrong_secret(key), "192.0.2.1") for _ in range(20)),
                                    return_exceptions=True)

    outcomes = run(scenario)
    assert outcomes.count("invalid API key") == 3
    assert sum(isinstance(o, GatewayError) and o.status == 429 for o in outcomes) == 17
    assert len(key_rows.argon2_threads) == 3


def test_the_refusal_is_a_429_in_the_callers_dialect_with_retry_after(key_rows):
    key = add_key(key_rows)
    auth = Auth()
    responses = []

    async def scenario():
        with taddons.context(auth) as tctx:
            tctx.configure(auth, auth_failures_per_key_prefix=1, auth_failures_per_client=0)
            for dialect, path in (("openai", "/v1/chat/completions"), ("ollama", "/api/chat")):
                flow = tflow.tflow()
                flow.request.headers["Authorization"] = f"Bearer {wrong_secret(key)}"
                flow.metadata[CONTEXT_KEY] = RequestContext(request_id=secrets.token_hex(12),
                                                            route=Route("inference", dialect, path),
                                                            client_address="192.0.2.1")
                await auth.request(flow)
                responses.append(flow.response)

    run(scenario)
    assert responses[0].status_code == 401
    refused = responses[1]
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert isinstance(json.loads(refused.content)["error"], str)  # Ollama's shape
