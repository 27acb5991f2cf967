"""The admission gate through a real gateway: queue limits, waits, and slots given back on every exit."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sim.stack import PYTHON, Service, free_port, wait_until
from tests.support.cluster import NO_LIMITS, options_with, slot_gauges, start_cluster

MODEL = "llama3.2"


def waiting_bound(n: int) -> str:
    """The same bound on waiting requests for every role."""
    return f"max_queued_per_user=admin={n},faculty={n},staff={n},student={n}"


@pytest.fixture(scope="module")
def slow_cluster(tmp_path_factory):
    """Nodes at 5 tokens/s (an answer takes seconds) with 2 slots registered per node: requests queue at the gate."""
    work_dir = tmp_path_factory.mktemp("gate")
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'db.sqlite'}", sim_args=("--tokens-per-s", "5"),
                          max_concurrent=2,
                          gateway_options=options_with(NO_LIMITS, waiting_bound(600), "breaker_cooldown_s=1"))
    yield stack
    stack.stop()


def headers(stack, user="student1"):
    return {"Authorization": f"Bearer {stack.keys[user]}"}


def node_stats(stack) -> dict:
    return httpx.get(f"{stack.ollama_url}/_sim/stats").json()


async def hold_stream(client: httpx.AsyncClient, stack, body: dict, user="student1") -> None:
    async with client.stream("POST", f"{stack.gateway_url}/api/generate", json=body, headers=headers(stack, user)) as r:
        async for _ in r.aiter_lines():
            pass


def test_clients_that_leave_while_queued_are_never_sent_upstream(slow_cluster):
    body = {"model": MODEL, "prompt": "hold the slot", "stream": True}
    queued_body = {"model": MODEL, "prompt": "never sent upstream", "stream": True}

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as holder:
            holders = [asyncio.create_task(hold_stream(holder, slow_cluster, body)) for _ in range(2)]
            await asyncio.sleep(0.5)
            leavers = []
            for _ in range(10):
                client = httpx.AsyncClient(timeout=60)
                leavers.append((client, asyncio.create_task(hold_stream(client, slow_cluster, queued_body))))
            await asyncio.sleep(0.5)
            assert slot_gauges(slow_cluster)["mindrouter_queued_requests"] == 10
            for client, task in leavers:
                task.cancel()
                await client.aclose()
            await asyncio.gather(*holders)

    asyncio.run(scenario())
    sent = [r for r in node_stats(slow_cluster)["recent"] if r["body"] and r["body"].get("prompt") == "never sent upstream"]
    assert sent == []
    wait_until(lambda: slot_gauges(slow_cluster) == {"mindrouter_in_flight_requests": 0, "mindrouter_queued_requests": 0},
               10, "the gauges back at zero")


def test_slots_come_back_after_engine_errors_and_dropped_connections(slow_cluster):
    client = httpx.Client(timeout=30, headers=headers(slow_cluster))
    for mode in ("error500", "drop"):
        httpx.post(f"{slow_cluster.ollama_url}/_sim/faults", json={"mode": mode, "count": 4})
        for _ in range(4):
            failed = client.post(f"{slow_cluster.gateway_url}/api/generate",
                                 json={"model": MODEL, "prompt": "fail", "stream": False, "options": {"num_predict": 2}})
            assert failed.status_code >= 500
    httpx.post(f"{slow_cluster.ollama_url}/_sim/reset")
    wait_until(lambda: slot_gauges(slow_cluster)["mindrouter_in_flight_requests"] == 0, 10, "in-flight back at zero")
    # The failures opened the node's breaker; after its 1 s cool-down a probe succeeds and closes it.
    wait_until(lambda: client.post(f"{slow_cluster.gateway_url}/api/generate", json={
        "model": MODEL, "prompt": "fine", "stream": False, "options": {"num_predict": 2}}).status_code == 200,
        15, "the node back in rotation")


def test_callers_that_leave_before_a_whole_answer_free_their_slots_and_the_node_at_once(slow_cluster):
    body = {"model": MODEL, "prompt": "never wanted after all", "stream": False, "options": {"num_predict": 100}}

    async def scenario():
        clients = [httpx.AsyncClient(timeout=60) for _ in range(2)]
        asked = [asyncio.create_task(client.post(f"{slow_cluster.gateway_url}/api/generate", json=body,
                                                 headers=headers(slow_cluster))) for client in clients]
        started = asyncio.get_running_loop().time()
        while node_stats(slow_cluster)["running"] < 2:  # both generating: 100 tokens at 5/s take 20 s
            assert asyncio.get_running_loop().time() - started < 10, "the two requests never reached the node"
            await asyncio.sleep(0.1)
        assert slot_gauges(slow_cluster)["mindrouter_in_flight_requests"] == 2
        for task, client in zip(asked, clients):
            task.cancel()
            await client.aclose()

    asyncio.run(scenario())
    wait_until(lambda: slot_gauges(slow_cluster)["mindrouter_in_flight_requests"] == 0, 5, "both slots given back")
    wait_until(lambda: node_stats(slow_cluster)["running"] == 0, 5, "the node no longer generating")


def test_a_caller_that_leaves_a_stream_before_its_first_byte_stops_the_backend_at_once(slow_cluster, tmp_path):
    """An Ollama node that takes 5 s to load the model: the caller leaves during the load."""
    port = free_port()
    node = Service("slow-loader", [PYTHON, "-m", "sim", "ollama", "--port", str(port), "--models", "phi3",
                                   "--load-ms", "5000"], {}, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        node.wait_http(f"{url}/api/version")
        registered = httpx.post(f"{slow_cluster.gateway_url}/admin/backends/register", headers=headers(slow_cluster, "admin"),
                                json={"name": "slow-loader", "url": url, "engine": "ollama", "max_concurrent": 2})
        assert registered.status_code == 201, registered.text
        wait_until(lambda: "slow-loader" in httpx.get(f"{slow_cluster.gateway_url}/readyz").json()["healthy_backends"],
                   15, "the slow loader in rotation")

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                asked = asyncio.create_task(hold_stream(client, slow_cluster, {"model": "phi3", "prompt": "load me"}))
                for _ in range(50):  # the node holds it, loading the model
                    if (await client.get(f"{url}/_sim/stats")).json()["running"] == 1:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the request never reached the node")
                asked.cancel()
                await asyncio.gather(asked, return_exceptions=True)

        asyncio.run(scenario())
        # Well before the load would have ended, the node has let the request go and the slot is back.
        wait_until(lambda: httpx.get(f"{url}/_sim/stats").json()["running"] == 0, 2, "the node no longer busy")
        wait_until(lambda: slot_gauges(slow_cluster)["mindrouter_in_flight_requests"] == 0, 2, "the slot given back")
    finally:
        node.stop()


def test_500_clients_leaving_queued_or_mid_stream_leave_no_slot_or_gauge_behind(slow_cluster):
    body = {"model": MODEL, "prompt": "a long answer please", "stream": True}

    async def leave_mid_stream(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", f"{slow_cluster.gateway_url}/api/generate", json=body,
                                 headers=headers(slow_cluster, "faculty1")) as response:
            async for _ in response.aiter_lines():
                return  # first chunk seen: hang up mid-stream

    async def leave_queued() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            task = asyncio.create_task(hold_stream(client, slow_cluster, body))
            await asyncio.sleep(1.0)
            task.cancel()

    async def scenario():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=600)) as client:
            await asyncio.gather(*(leave_mid_stream(client) for _ in range(20)), *(leave_queued() for _ in range(480)))

    asyncio.run(scenario())
    wait_until(lambda: slot_gauges(slow_cluster) == {"mindrouter_in_flight_requests": 0, "mindrouter_queued_requests": 0},
               30, "the gauges back at zero")
    wait_until(lambda: node_stats(slow_cluster)["running"] == 0, 30, "the node idle")
    ok = httpx.post(f"{slow_cluster.gateway_url}/api/generate", headers=headers(slow_cluster), timeout=30,
                    json={"model": MODEL, "prompt": "after the storm", "stream": False, "options": {"num_predict": 2}})
    assert ok.status_code == 200


@pytest.fixture(scope="module")
def limited_cluster(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("limits")
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'db.sqlite'}", sim_args=("--tokens-per-s", "5"),
                          max_concurrent=1, gateway_options=options_with(NO_LIMITS, waiting_bound(2), "scheduler_max_wait_s=2"))
    yield stack
    stack.stop()


def test_queue_limit_and_max_wait_answer_with_retry_after_in_each_dialect(limited_cluster):
    stack = limited_cluster
    slow = {"model": MODEL, "prompt": "take your time", "stream": True}

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            holder = asyncio.create_task(hold_stream(client, stack, slow))  # the model's only slot
            await asyncio.sleep(0.5)
            queued = [asyncio.create_task(client.post(f"{stack.gateway_url}/api/chat", headers=headers(stack), json={
                "model": MODEL, "messages": [{"role": "user", "content": "q"}], "stream": False})) for _ in range(2)]
            await asyncio.sleep(0.3)
            over = await client.post(f"{stack.gateway_url}/v1/chat/completions", headers=headers(stack), json={
                "model": MODEL, "messages": [{"role": "user", "content": "one too many"}]})
            waited = await asyncio.gather(*queued)
            holder.cancel()
            return over, waited

    over, waited = asyncio.run(scenario())
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert over.json()["error"]["type"] == "rate_limit_error"
    for response in waited:
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert "within 2 s" in response.json()["error"]
