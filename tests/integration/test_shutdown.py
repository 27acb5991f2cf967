"""SIGTERM under load: every request the gateway took is answered or refused in its dialect, charged and audited."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from store.db import open_database
from store.models import Quota, Request, RequestBody, User
from tests.support.cluster import NO_LIMITS, start_cluster

MODEL = "llama3.2"  # on the simulated Ollama node, which gets two slots
USERS = ("faculty1", "staff1", "student1")


@pytest.fixture
def cluster(tmp_path):
    stack = start_cluster(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", sim_args=("--tokens-per-s", "5"),
                          max_concurrent=2, gateway_options=(*NO_LIMITS, "shutdown_grace_s=30"))
    yield stack
    stack.stop()


def generate(stack, user: str, prompt: str, outcomes: dict, started: threading.Semaphore) -> None:
    """One streamed /api/generate; what the caller got: status, the body's lines, the engine's token count."""
    body = {"model": MODEL, "prompt": prompt, "stream": True, "options": {"num_predict": 100}}
    headers = {"Authorization": f"Bearer {stack.keys[user]}"}
    try:
        with httpx.stream("POST", f"{stack.gateway_url}/api/generate", json=body, headers=headers,
                          timeout=60) as response:
            started.release()
            lines = [json.loads(line) for line in response.iter_lines() if line]
            outcomes[prompt] = (user, response.status_code, lines, response.headers.get("Retry-After"))
    except httpx.HTTPError as exc:  # a reset or cut connection: what must never happen
        started.release()
        outcomes[prompt] = (user, None, repr(exc), None)


def test_sigterm_answers_running_refuses_queued_and_new_in_their_dialect_and_charges_and_audits_all(cluster):
    charged: dict[str, int] = {}
    for user in USERS:  # keys verified and budgets loaded: what follows is only queueing and generating
        warm_up = httpx.post(f"{cluster.gateway_url}/api/generate",
                             headers={"Authorization": f"Bearer {cluster.keys[user]}"},
                             json={"model": MODEL, "prompt": "warm-up", "stream": False, "options": {"num_predict": 1}},
                             timeout=30).raise_for_status().json()
        charged[user] = warm_up["prompt_eval_count"] + warm_up["eval_count"]
    outcomes: dict[str, tuple] = {}
    started = threading.Semaphore(0)
    clients = [threading.Thread(target=generate, args=(cluster, USERS[i % 3], f"shutdown-{i}", outcomes, started))
               for i in range(6)]
    for client in clients:
        client.start()
        time.sleep(0.05)
    for _ in range(2):  # two running (two slots); the other four queued
        assert started.acquire(timeout=20)
    time.sleep(0.3)
    stopping = threading.Thread(target=cluster.service("gateway").stop, args=(signal.SIGTERM, 45))
    stopping.start()
    time.sleep(0.5)
    late = threading.Thread(target=generate, args=(cluster, "student1", "shutdown-late", outcomes, started))
    late.start()
    for client in [*clients, late]:
        client.join(60)
    stopping.join(60)

    answered = {p: o for p, o in outcomes.items() if o[1] == 200}
    refused = {p: o for p, o in outcomes.items() if o[1] == 503}
    assert len(outcomes) == 7 and len(answered) + len(refused) == 7, outcomes
    assert len(answered) == 2 and "shutdown-late" in refused
    for _, _, lines, _ in answered.values():
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"  # the whole answer, not a cut stream
    for _, _, lines, retry_after in refused.values():
        assert isinstance(lines[0]["error"], str) and "shutting down" in lines[0]["error"] and retry_after

    db = open_database(cluster.env["DATABASE_URL"])
    with db.bind_ctx([Request, RequestBody, Quota, User]):
        rows = {row.prompt: row for row in RequestBody.select(RequestBody, Request).join(Request)
                if "shutdown-" in row.prompt}
        used = {quota.user.username: quota.used for quota in Quota.select(Quota, User).join(User)}
    statuses = sorted(body.request.status for prompt, body in rows.items() if "shutdown-late" not in prompt)
    assert statuses == [200, 200, 503, 503, 503, 503]  # every request taken before SIGTERM is audited
    # One that arrives while the gateway drains is turned away at the door, before anything is taken: like
    # a path the gateway does not serve, it has no audit row.
    for user, _, lines, _ in answered.values():
        charged[user] = charged.get(user, 0) + lines[-1]["prompt_eval_count"] + lines[-1]["eval_count"]
    assert {user: used.get(user, 0) for user in USERS} == {user: charged.get(user, 0) for user in USERS}
