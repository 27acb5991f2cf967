"""The Policy addon's hooks in process: the order of the checks, refusals in dialect, settling exactly once."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

import addons.policy as policy_module
from addons.auth import Principal
from addons.context import CONTEXT_KEY, RequestContext, Route
from addons.limits import RedisCounters, connect
from addons.policy import Policy, request_cost
from addons.registry import BackendRegistry
from addons.settings import Environment
from translators.canonical import Usage
from translators.pipeline import parse_client_request

OPENAI_BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}
OLLAMA_BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "stream": False,
               "options": {"num_predict": 50}}
COST = request_cost(parse_client_request("/v1/chat/completions", json.dumps(OPENAI_BODY).encode()))


class RecordingWriter:
    def __init__(self) -> None:
        self.writes = []

    def submit(self, write) -> None:
        self.writes.append(write)


def principal(**overrides) -> Principal:
    fields = dict(user_id=1, username="student1", role="student", weight=1.0, key_id=11, key_prefix="abcd1234",
                  rpm_override=None, max_concurrent_override=None, max_queued_override=None, token_budget_override=None)
    return Principal(**(fields | overrides))


def inference_flow(who: Principal, dialect: str = "openai"):
    path, body = ("/v1/chat/completions", OPENAI_BODY) if dialect == "openai" else ("/api/chat", OLLAMA_BODY)
    flow = tflow.tflow()
    context = RequestContext(request_id=secrets.token_hex(12), route=Route("inference", dialect, path),
                             client_address="127.0.0.1")
    context.principal = who
    context.canonical = parse_client_request(path, json.dumps(body).encode())
    flow.metadata[CONTEXT_KEY] = context
    return flow, context


@pytest.fixture
def budget(monkeypatch):
    """The budget the database would hand out: set `budget["tokens"]` before the first request."""
    loaded = {"tokens": 10 * COST, "used": 0}
    monkeypatch.setattr(policy_module, "load_quota", lambda *args: (loaded["tokens"], loaded["used"]))
    return loaded


def run(scenario, **options):
    """Run `async scenario(policy, writer)` with Policy loaded in a mitmproxy test context."""
    environment = Environment(database_url="sqlite://", admin_app_url="", redis_url=None, artifact_storage_path="",
                              default_token_budget=1000, fairness_window_s=300)
    writer = RecordingWriter()
    policy = Policy(writer, environment, BackendRegistry(writer))

    async def main():
        with taddons.context(policy) as tctx:
            tctx.configure(policy, **options)
            result = await scenario(policy, writer)
            if policy.settling:
                await asyncio.wait(policy.settling)
            return result

    return asyncio.run(main())


async def settled(policy: Policy) -> None:
    await asyncio.sleep(0)
    if policy.settling:
        await asyncio.wait(policy.settling)


def answered(flow, status: int = 200) -> None:
    flow.response = tutils.tresp(status_code=status)


def error_of(response):
    return json.loads(response.content)


def test_requests_that_are_not_inference_or_have_no_principal_pass_untouched(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal())
        context.route = Route("catalog", "openai", "/v1/models")
        await policy.request(flow)
        anonymous, anonymous_context = inference_flow(principal())
        anonymous_context.principal = None
        await policy.request(anonymous)
        return flow.response, context.admission, anonymous.response, anonymous_context.admission

    assert run(scenario) == (None, None, None, None)


def test_rate_limit_refuses_in_the_callers_dialect_with_retry_after(budget):
    async def scenario(policy, writer):
        flows = [inference_flow(principal(rpm_override=2), dialect) for dialect in ("openai", "ollama", "ollama")]
        for flow, _ in flows:
            await policy.request(flow)
        return [flow.response for flow, _ in flows]

    first, second, third = run(scenario)
    assert first is None and second is None
    assert third.status_code == 429 and third.headers["Retry-After"] == "60"
    assert "2 requests per 60 s" in error_of(third)["error"]


def test_quota_refusal_is_insufficient_quota_until_next_month_and_gives_the_rate_token_back(budget):
    budget["tokens"] = COST - 1

    async def scenario(policy, writer):
        flow, _ = inference_flow(principal(rpm_override=5))
        await policy.request(flow)
        await settled(policy)
        return flow.response, list(policy.local.windows[11].times), writer.writes

    refused, rate_window, writes = run(scenario)
    assert refused.status_code == 429
    assert error_of(refused)["error"]["type"] == "insufficient_quota"
    assert error_of(refused)["error"]["code"] == "insufficient_quota"
    assert refused.headers["x-should-retry"] == "false"
    assert 1 <= int(refused.headers["Retry-After"]) <= 31 * 86400
    assert rate_window == [] and writes == []


def test_a_budget_covering_ten_admits_ten_of_fifty_at_once(budget):
    async def scenario(policy, writer):
        flows = [inference_flow(principal(max_concurrent_override=0)) for _ in range(50)]
        await asyncio.gather(*(policy.request(flow) for flow, _ in flows))
        return [flow.response is None for flow, _ in flows]

    assert sum(run(scenario)) == 10


def test_settling_charges_the_engines_counts_exactly_once(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal())
        await policy.request(flow)
        context.backend = SimpleNamespace(name="node")
        context.translator = SimpleNamespace(usage=Usage(prompt_tokens=7, completion_tokens=5))
        answered(flow)
        policy.response(flow)
        policy.response(flow)
        policy.error(flow)
        await settled(policy)
        ledger = policy.local.ledgers[1, context.admission.period]
        return len(writer.writes), (ledger.used, ledger.reserved), policy.held

    assert run(scenario) == (1, (12, 0), {})


def test_a_request_that_failed_before_its_first_byte_costs_nothing(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal())
        await policy.request(flow)
        context.backend = SimpleNamespace(name="node")
        flow.error = tflow.terr()
        policy.error(flow)
        await settled(policy)
        return policy.local.ledgers[1, context.admission.period].used, writer.writes, policy.held

    assert run(scenario) == (0, [], {})


def test_a_stream_cut_without_counts_costs_its_reservation(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal())
        await policy.request(flow)
        context.backend = SimpleNamespace(name="node")
        context.translator = SimpleNamespace(usage=None)
        context.first_byte_at = time.monotonic()
        policy.error(flow)
        await settled(policy)
        return policy.local.ledgers[1, context.admission.period].used

    assert run(scenario) == COST


def test_an_engine_error_without_counts_costs_nothing(budget):
    async def scenario(policy, writer):
        flow, context = inference_flow(principal())
        await policy.request(flow)
        context.backend = SimpleNamespace(name="node")
        context.translator = SimpleNamespace(usage=None)
        answered(flow, 502)
        policy.response(flow)
        await settled(policy)
        return policy.local.ledgers[1, context.admission.period].used

    assert run(scenario) == 0


@pytest.mark.parametrize("option, value, complaint", [
    ("rate_limit_rpm", "admin=1,faculty=2,staff=3", "no limit for student"),
    ("rate_limit_rpm", "admin=1,faculty=2,staff=3,student=x", "not a whole number"),
    ("policy_lease_ttl_s", 0, "whole number ≥ 1"),
    ("redis_key_prefix", " ", "must not be empty"),
])
def test_bad_options_are_refused_with_what_was_expected(option, value, complaint):
    async def scenario(policy, writer):
        return None

    with pytest.raises(exceptions.OptionsError, match=complaint) as raised:
        run(scenario, **{option: value})
    assert option in str(raised.value)


def test_an_unreachable_redis_falls_back_to_in_process_counters_quickly(budget):
    async def scenario(policy, writer):
        policy.shared = RedisCounters(connect("redis://127.0.0.1:1/0", 0.2), "unreachable")
        started = time.monotonic()
        flows = [inference_flow(principal(rpm_override=1)) for _ in range(3)]
        for flow, _ in flows:
            await policy.request(flow)
        elapsed = time.monotonic() - started
        await policy.shared.client.aclose()
        return [flow.response.status_code if flow.response else None for flow, _ in flows], elapsed

    statuses, elapsed = run(scenario)
    assert statuses == [None, 429, 429]  # the in-process counters still hold the limit
    assert elapsed < 1.5  # one failed attempt, then Redis is left alone for redis_retry_s


def test_a_top_up_reaches_a_refused_user_at_the_next_refresh(budget, monkeypatch):
    budget["tokens"] = COST - 1

    async def scenario(policy, writer):
        refused, _ = inference_flow(principal())
        await policy.request(refused)
        monkeypatch.setattr(policy_module, "budgets_of", lambda period, user_ids: {1: COST - 1 + 10 * COST})
        await policy.refresh_budgets()
        admitted, _ = inference_flow(principal())
        await policy.request(admitted)
        return refused.response.status_code, admitted.response

    assert run(scenario) == (429, None)


def test_the_refresh_writes_back_what_is_reserved(budget, monkeypatch):
    monkeypatch.setattr(policy_module, "budgets_of", lambda period, user_ids: {1: budget["tokens"]})

    async def scenario(policy, writer):
        flow, _ = inference_flow(principal())
        await policy.request(flow)
        await policy.refresh_budgets()
        await policy.refresh_budgets()  # unchanged: not written again
        return len(writer.writes)

    assert run(scenario) == 1
