"""OpenAI's /v1/responses goes through the same fair queue, token budgets and audit log as chat.

A stack of its own for the budget and the shares: one vLLM slot, so the fair queue decides every grant,
a small quantum and no burst credit, so shares are by weight from the start. The audit test uses the
session's cluster.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from scheduler.quota import period_of
from sim import generation
from sim.stack import wait_until
from store import database
from store.models import Quota, RequestBody, StoredResponse, utcnow
from tests.integration.test_audit import audit_rows
from tests.integration.test_fair_limits import live_users
from tests.support.cluster import new_student, start_one_slot_cluster

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the vLLM node's
PROMPT = "tell me everything about wheat barley lentils and the rolling hills"


@pytest.fixture(scope="module")
def one_slot_stack(tmp_path_factory):
    stack = start_one_slot_cluster(tmp_path_factory.mktemp("responses-policy"))
    yield stack
    stack.stop()


def ask(stack, key: str, max_output_tokens: int = 20) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/v1/responses", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": MODEL, "input": PROMPT, "max_output_tokens": max_output_tokens})


def test_a_token_budget_is_settled_at_the_exact_usage_and_refuses_past_it(one_slot_stack):
    first = ask(one_slot_stack, one_slot_stack.keys["admin"]).json()
    per_request = first["usage"]["total_tokens"]
    user_id, key = new_student(one_slot_stack, "responses", token_budget_override=3 * per_request)
    answers = [ask(one_slot_stack, key) for _ in range(6)]
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served and refused and answers.index(refused[0]) == len(served)  # served until spent, then refused
    for answer in refused:
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert "token budget" in answer.json()["error"]["message"]
    reported = sum(a.json()["usage"]["total_tokens"] for a in served)

    def used() -> int:
        database.initialize(one_slot_stack.db)
        return Quota.get((Quota.user == user_id) & (Quota.period == period_of(utcnow()))).used

    deadline = time.monotonic() + 10
    while used() != reported and time.monotonic() < deadline:
        time.sleep(0.2)
    assert used() == reported


def test_responses_of_two_users_share_one_slot_by_weight(one_slot_stack):
    """faculty1 (weight 3) and student1 (weight 1) keep eight response streams each on one slot: after the
    first second, the output tokens served split 3 : 1."""
    stack = one_slot_stack
    counted: dict[str, int] = {}
    client = openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused", max_retries=0)

    async def scenario() -> None:
        stop, measuring = asyncio.Event(), asyncio.Event()

        async def keep_asking(user: str) -> None:
            asker = client.with_options(api_key=stack.keys[user])
            while not stop.is_set():
                events = await asker.responses.create(model=MODEL, input=PROMPT, max_output_tokens=100, stream=True)
                async for event in events:
                    if event.type == "response.completed" and measuring.is_set() and not stop.is_set():
                        counted[user] = counted.get(user, 0) + event.response.usage.output_tokens

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


def test_a_response_leaves_its_audit_row_and_its_stored_copy(cluster):
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["staff1"], max_retries=0)
    prompt = "An audited Responses question about chickpeas"
    events = list(client.responses.create(model="llama3.2", input=prompt, stream=True))
    final = events[-1].response
    (row,) = audit_rows(cluster, prompt)
    assert (row.endpoint, row.client_dialect, row.backend_dialect, row.model, row.status, row.stream) == (
        "/v1/responses", "openai", "ollama", "llama3.2", 200, True)
    assert row.user.username == "staff1"
    assert (row.prompt_tokens, row.completion_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    body = RequestBody.get(RequestBody.request == row)
    assert json.loads(body.prompt)["input"] == prompt
    assert body.response_text == generation.reply_text("llama3.2", prompt)
    assert "event: response.completed" in body.response
    stored = StoredResponse.get(StoredResponse.response_id == final.id)
    assert stored.user_id == row.user_id and json.loads(stored.response)["output"] == [
        item.to_dict() for item in final.output]
