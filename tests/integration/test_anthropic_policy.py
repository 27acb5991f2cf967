"""Anthropic's /v1/messages goes through the same fair queue, budgets, rate limits and audit log as chat.

One stack of its own: a single vLLM slot, so the fair queue decides every grant, a small quantum so that
a few seconds hold many rounds of it, and no burst credit, so that shares are by weight from the start
(tests/integration/test_fair_limits.py has the shipped defaults). The audit test uses the session's cluster.
"""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import httpx
import pytest

from scheduler.quota import period_of
from sim import generation
from sim.stack import wait_until
from store import database
from store.models import Quota, RequestBody, utcnow
from tests.integration.test_audit import audit_rows
from tests.integration.test_fair_limits import live_users
from tests.support.cluster import new_student, start_one_slot_cluster

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the vLLM node's
PROMPT = "describe carefully everything regarding mountains rivers forests oceans"


@pytest.fixture(scope="module")
def one_slot_stack(tmp_path_factory):
    stack = start_one_slot_cluster(tmp_path_factory.mktemp("anthropic-policy"))
    yield stack
    stack.stop()


def message(max_tokens: int = 20) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}]}


def post(stack, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/v1/messages", json=body, headers={"x-api-key": key}, timeout=30)


def test_a_token_budget_is_reserved_then_settled_at_the_exact_usage_and_refuses_past_it(one_slot_stack):
    first = post(one_slot_stack, one_slot_stack.keys["admin"], message())
    per_request = first.json()["usage"]["input_tokens"] + first.json()["usage"]["output_tokens"]
    user_id, key = new_student(one_slot_stack, "anthropic", token_budget_override=4 * per_request)
    answers = [post(one_slot_stack, key, message()) for _ in range(8)]
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served and refused and answers.index(refused[0]) == len(served)  # served until spent, then refused
    for answer in refused:
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert answer.headers["x-should-retry"] == "false"  # the anthropic SDK must not retry this either
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "rate_limit_error"
        assert "token budget" in answer.json()["error"]["message"]
    reported = sum(a.json()["usage"]["input_tokens"] + a.json()["usage"]["output_tokens"] for a in served)
    assert reported <= 4 * per_request

    def used() -> int:
        database.initialize(one_slot_stack.db)
        return Quota.get((Quota.user == user_id) & (Quota.period == period_of(utcnow()))).used

    deadline = time.monotonic() + 10
    while used() != reported and time.monotonic() < deadline:
        time.sleep(0.2)
    assert used() == reported


def test_the_rate_limit_of_a_key_answers_in_anthropics_shape(one_slot_stack):
    _, key = new_student(one_slot_stack, "anthropic", rpm_override=2)
    client = anthropic.Anthropic(base_url=one_slot_stack.gateway_url, api_key=key, max_retries=0)
    for _ in range(2):
        client.messages.create(**message())
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**message())
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert int(caught.value.response.headers["Retry-After"]) >= 1


def test_messages_of_two_users_share_one_slot_by_weight(one_slot_stack):
    """faculty1 (weight 3) and student1 (weight 1) keep eight streams each open on one slot: after the first
    second, the tokens served split 3 : 1."""
    stack = one_slot_stack
    counted: dict[str, int] = {}
    client = anthropic.AsyncAnthropic(base_url=stack.gateway_url, api_key="unused", max_retries=0)

    async def scenario() -> None:
        stop, measuring = asyncio.Event(), asyncio.Event()

        async def keep_asking(user: str) -> None:
            asker = client.with_options(api_key=stack.keys[user])
            while not stop.is_set():
                async with asker.messages.stream(**message(max_tokens=100)) as stream:
                    final = await stream.get_final_message()
                if measuring.is_set() and not stop.is_set():
                    counted[user] = counted.get(user, 0) + final.usage.output_tokens

        tasks = [asyncio.create_task(keep_asking(user)) for user in ("faculty1", "student1") for _ in range(8)]
        await asyncio.sleep(1)  # both users' streams are queued
        measuring.set()
        await asyncio.sleep(8)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert counted["faculty1"] / (counted["faculty1"] + counted["student1"]) == pytest.approx(0.75, abs=0.1)
    wait_until(lambda: all(not row["running"] and not row["waiting"] for row in live_users(stack)), 10,
               "both users' running and waiting requests in the live queue to return to 0")


def test_a_messages_request_leaves_its_audit_row(cluster):
    client = anthropic.Anthropic(base_url=cluster.gateway_url, api_key=cluster.keys["faculty1"], max_retries=0)
    prompt = "An audited Anthropic question about lentils"
    with client.messages.stream(model="llama3.2", max_tokens=256, messages=[{"role": "user", "content": prompt}]) as stream:
        final = stream.get_final_message()
    client.messages.count_tokens(model="llama3.2", messages=[{"role": "user", "content": prompt}])
    streamed, counted = audit_rows(cluster, prompt, count=2)
    assert (streamed.endpoint, streamed.client_dialect, streamed.backend_dialect, streamed.model, streamed.status,
            streamed.stream) == ("/v1/messages", "anthropic", "ollama", "llama3.2", 200, True)
    assert streamed.user.username == "faculty1"
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    body = RequestBody.get(RequestBody.request == streamed)
    assert json.loads(body.prompt)["messages"][0]["content"] == prompt
    assert body.response_text == generation.reply_text("llama3.2", prompt)
    assert "event: message_start" in body.response and body.response.rstrip().endswith('{"type":"message_stop"}')
    assert (counted.endpoint, counted.status, counted.completion_tokens) == ("/v1/messages/count_tokens", 200, 1)


def test_a_message_passed_to_vllms_own_api_is_audited_and_counted_alike(cluster):
    """The engine's own events reach the caller; the gateway still reads the text and the exact usage from them."""
    client = anthropic.Anthropic(base_url=cluster.gateway_url, api_key=cluster.keys["faculty1"], max_retries=0)
    prompt = "An audited Anthropic question about chickpeas"
    with client.messages.stream(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": prompt}]) as stream:
        final = stream.get_final_message()
    (row,) = audit_rows(cluster, prompt, count=1)
    assert (row.endpoint, row.backend_dialect, row.status, row.stream) == ("/v1/messages", "vllm", 200, True)
    assert (row.prompt_tokens, row.completion_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    assert row.completion_tokens > 0
    body = RequestBody.get(RequestBody.request == row)
    assert body.response_text == final.content[0].text == generation.reply_text(MODEL, prompt)
    assert body.response.count("event: content_block_delta") == final.usage.output_tokens
