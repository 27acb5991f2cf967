"""What admission takes and gives back (issue 11 item 3), what a budget reserves (issue 10 item 8) and
ledgers that follow the database across a Redis fallback (issue 10 item 9)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import redis

import addons.policy as policy_module
from addons.limits import RedisCounters, connect
from tests.unit.policy.support import REDIS_URL, delete_prefix, requires_redis, unique_prefix
from tests.unit.policy.test_policy_addon import (
    COST,
    answered,
    error_of,
    inference_flow,
    principal,
    run,
    settled,
)
from translators.pipeline import parse_client_request


@pytest.fixture
def budget(monkeypatch):
    """The budget the database would hand out (as in test_policy_addon): set it before the first request."""
    loaded = {"tokens": 10 * COST, "used": 0}
    monkeypatch.setattr(policy_module, "load_quota", lambda *args: (loaded["tokens"], loaded["used"]))
    return loaded


def chat(**fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], **fields}
    return parse_client_request("/v1/chat/completions", json.dumps(body).encode())


def window_of(policy, key_id: int = 11) -> int:
    window = policy.local.windows.get(key_id)
    return len(window.times) if window else 0


# ---- a refusal gives back what earlier steps took ------------------------------------------------

def test_a_budget_refusal_gives_the_rate_token_back(budget, monkeypatch):
    budget["tokens"] = COST - 1

    async def scenario(policy, writer):
        refused, _ = inference_flow(principal(rpm_override=1))
        await policy.request(refused)
        await settled(policy)
        monkeypatch.setattr(policy_module, "budgets_of", lambda period, user_ids: {1: 10 * COST})
        await policy.refresh_budgets()
        admitted, _ = inference_flow(principal(rpm_override=1))
        await policy.request(admitted)
        return refused.response.status_code, admitted.response, window_of(policy)

    assert run(scenario) == (429, None, 1)  # the refused one never counted toward the rate


@pytest.mark.parametrize("status", [429, 503, 404])
def test_a_refusal_by_the_gate_gives_the_rate_token_and_the_reservation_back(budget, status):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal(rpm_override=1))
        await policy.request(flow)
        answered(flow, status)  # what Gate answers: queue full, no backend, unknown model, max wait
        policy.response(flow)
        await settled(policy)
        ledger = policy.local.ledgers[1, context.admission.period]
        again, _ = inference_flow(principal(rpm_override=1))
        await policy.request(again)
        return window_of(policy), ledger.reserved, ledger.used, again.response

    assert run(scenario) == (1, COST, 0, None)  # only `again` counts, and only it holds a reservation


def test_an_admitted_request_counts_toward_the_rate_whatever_its_answer(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal(rpm_override=1))
        await policy.request(flow)
        context.backend, context.granted_at = SimpleNamespace(name="node"), 1.0
        answered(flow, 502)  # the engine failed: the request was admitted and ran
        policy.response(flow)
        await settled(policy)
        again, _ = inference_flow(principal(rpm_override=1))
        await policy.request(again)
        return again.response.status_code, error_of(again.response)["error"]["code"]

    assert run(scenario) == (429, "rate_limit_exceeded")


def test_requests_over_the_concurrency_limit_are_not_refused_by_policy(budget):
    """The cap on running requests is the fair queue's (Gate): policy admits them to wait there."""
    async def scenario(policy, writer):
        flows = [inference_flow(principal(max_concurrent_override=1)) for _ in range(5)]
        for flow, _ in flows:
            await policy.request(flow)
        return [flow.response for flow, _ in flows]

    assert run(scenario) == [None] * 5


# ---- what a budget reserves ------------------------------------------------------------------------

def test_the_reservation_covers_max_tokens_times_n():
    prompt = chat().estimated_prompt_tokens
    assert policy_module.reservation(chat(max_tokens=2000, n=3), None) == 3 * (prompt + 2000)
    assert policy_module.reservation(chat(max_completion_tokens=700), None) == prompt + 700


def test_without_max_tokens_the_reservation_covers_the_models_context():
    from addons.policy import UNKNOWN_CONTEXT_TOKENS

    prompt = chat().estimated_prompt_tokens
    assert policy_module.reservation(chat(), 32768) == prompt + 32768
    assert policy_module.reservation(chat(n=2), None) == 2 * (prompt + UNKNOWN_CONTEXT_TOKENS)


def test_a_user_with_600_tokens_left_cannot_start_a_request_that_may_spend_a_context(budget):
    budget["tokens"] = 600

    async def scenario(policy, writer):
        big, big_context = inference_flow(principal())
        big_context.canonical = chat(max_tokens=4000)
        await policy.request(big)
        small, small_context = inference_flow(principal())
        small_context.canonical = chat(max_tokens=100)
        await policy.request(small)
        return big.response, small.response

    big, small = run(scenario)
    assert big.status_code == 429 and error_of(big)["error"]["code"] == "insufficient_quota"
    assert "max_tokens" in error_of(big)["error"]["message"]  # what to do: ask for less
    assert small is None


# ---- ledgers across a Redis fallback ---------------------------------------------------------------

@pytest.fixture
def redis_prefix():
    prefix = unique_prefix()
    yield prefix
    delete_prefix(prefix)


def fail_redis(policy, monkeypatch, failing: bool) -> None:
    async def refuse(*args, **kwargs):
        raise redis.ConnectionError("Redis is down (test)")

    if failing:
        monkeypatch.setattr(policy.shared, "reserve", refuse)
    else:
        monkeypatch.undo()
        policy.shared_retry_at = 0.0  # as if redis_retry_s had passed


def spend(policy, tokens: int, max_tokens: int = 10):
    """One request admitted and settled with `tokens` used; its response status."""
    async def go():
        flow, context = inference_flow(principal())
        context.canonical = chat(max_tokens=max_tokens)
        await policy.request(flow)
        if flow.response is not None:
            return flow.response.status_code
        context.backend, context.granted_at = SimpleNamespace(name="node"), 1.0
        context.translator = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=tokens, completion_tokens=0))
        answered(flow)
        policy.response(flow)
        await settled(policy)
        return 200

    return go()


def across_a_fallback(budget, redis_prefix, steps):
    """Run `steps(policy, redis_down, redis_up)` with a Redis store that the test fails and restores."""
    failures = pytest.MonkeyPatch()

    async def scenario(policy, writer):
        policy.shared = RedisCounters(connect(REDIS_URL, 2.0), redis_prefix)
        try:
            return await steps(policy, lambda: fail_redis(policy, failures, True),
                               lambda: fail_redis(policy, failures, False))
        finally:
            failures.undo()
            await policy.shared.client.aclose()

    return run(scenario)


@requires_redis
def test_an_in_process_ledger_reloads_what_was_spent_on_redis(budget, redis_prefix):
    budget["tokens"] = 1000

    async def steps(policy, redis_down, redis_up):
        redis_down()
        assert await spend(policy, 0) == 200  # an in-process ledger, from the database: 0 used
        redis_up()
        assert await spend(policy, 700) == 200  # spent on Redis ...
        budget["used"] = 700  # ... and written to the database by the gateway's writer
        redis_down()
        return await spend(policy, 0, max_tokens=400)  # 300 left: may not spend 400

    assert across_a_fallback(budget, redis_prefix, steps) == 429


@requires_redis
def test_a_redis_ledger_reloads_what_was_spent_in_process(budget, redis_prefix):
    budget["tokens"] = 1000

    async def steps(policy, redis_down, redis_up):
        assert await spend(policy, 0) == 200  # the Redis ledger, from the database: 0 used
        redis_down()
        assert await spend(policy, 700) == 200  # spent in process during the outage ...
        budget["used"] = 700  # ... and written to the database
        redis_up()
        return await spend(policy, 0, max_tokens=400)

    assert across_a_fallback(budget, redis_prefix, steps) == 429
