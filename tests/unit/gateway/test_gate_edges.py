"""The gate never hangs a request or leaks a slot: a backend removed under a grant, a caller who already left."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import redis.asyncio as aioredis
from mitmproxy.test import taddons, tflow

from addons.auth import Principal
from addons.cluster import SharedQueue
from addons.context import CONTEXT_KEY, RequestContext, Route
from addons.gate import Gate, backend_state
from addons.polling import ModelView
from addons.registry import BackendView
from tests.unit.policy.support import REDIS_URL, delete_prefix, requires_redis, unique_prefix
from translators.errors import GatewayError
from translators.pipeline import parse_client_request

CHAT = b'{"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
STUDENT = Principal(user_id=7, username="student1", role="student", weight=1.0, key_id=1, key_prefix="abcdefgh",
                    rpm_override=None, max_concurrent_override=None, max_queued_override=None, token_budget_override=None)


class Registry:
    def __init__(self, *views: BackendView) -> None:
        self.views = {view.id: view for view in views}
        self.listeners: list = []

    def serves(self, model: str | None) -> bool:
        return model == "qwen"

    def capabilities(self, model: str) -> list:
        return []

    def serving(self, model: str) -> list[BackendView]:
        return list(self.views.values())


class Writer:
    def submit(self, write) -> None:
        pass


def backend(backend_id: int) -> BackendView:
    return BackendView(id=backend_id, name=f"node-{backend_id}", url="http://node", engine="vllm", max_concurrent=1,
                       enabled=True, draining=False, priority=0, healthy=True,
                       models={"qwen": ModelView("qwen", resident=True)})


def chat_flow():
    flow = tflow.tflow()
    flow.client_conn.timestamp_end = None  # a caller still connected (mitmproxy's test flows come closed)
    flow.request.path = "/v1/chat/completions"
    context = RequestContext("req-1", Route("inference", "openai", "/v1/chat/completions"), "127.0.0.1")
    context.canonical = parse_client_request("/v1/chat/completions", CHAT)
    context.model, context.principal = "qwen", STUDENT
    flow.metadata[CONTEXT_KEY] = context
    return flow, context


def through_gate(gate: Gate, flow) -> None:
    async def scenario():
        with taddons.context(gate) as tctx:
            tctx.configure(gate)
            await gate.request(flow)

    asyncio.run(scenario())


def test_a_grant_on_a_backend_removed_meanwhile_answers_503_and_holds_no_slot():
    node = backend(1)
    registry = Registry(node)
    gate = Gate(registry, Writer(), 300)
    gate.scheduler.update_backends([backend_state(node)])
    del registry.views[node.id]  # deleted by an admin; the scheduler hears of it at the next refresh
    flow, context = chat_flow()
    through_gate(gate, flow)
    assert flow.response.status_code == 503 and "Retry-After" in flow.response.headers
    assert "removed" in json.loads(flow.response.content)["error"]["message"]
    assert context.backend is None and not gate.waiters
    assert all(row["running"] == 0 and row["waiting"] == 0
               for row in gate.scheduler.snapshot(time.monotonic())["queues"])


def test_a_caller_who_left_before_queueing_is_never_queued():
    node = backend(1)
    gate = Gate(Registry(node), Writer(), 300)
    gate.scheduler.update_backends([backend_state(node)])
    flow, context = chat_flow()
    flow.client_conn.timestamp_end = time.time()  # left while auth, image fetch or policy awaited
    through_gate(gate, flow)
    assert flow.error is not None and flow.response is None
    assert context.backend is None and node.in_flight == 0 and not gate.waiters


def test_the_live_queue_snapshot_carries_each_backends_breaker(monkeypatch):
    node = backend(1)
    node.breaker.state, node.breaker.opened_at = "open", time.monotonic()
    submitted, written = [], []
    writer = Writer()
    writer.submit = submitted.append
    gate = Gate(Registry(node), writer, 300)
    gate.scheduler.update_backends([backend_state(node)])
    monkeypatch.setattr("addons.gate.write_snapshot", lambda gateway, snapshot: written.append(snapshot))

    async def scenario():
        with taddons.context(gate) as tctx:
            tctx.configure(gate)
            gate.tick()

    asyncio.run(scenario())
    for write in submitted:
        write()
    assert [row["breaker"] for row in written[0]["backends"]] == ["open"]


def test_a_users_waiting_bound_override_wins_over_the_roles():
    node = backend(1)
    gate = Gate(Registry(node), Writer(), 300)
    gate.scheduler.update_backends([backend_state(node)])
    batch_user = dataclasses.replace(STUDENT, max_queued_override=1)
    outcomes = []

    async def scenario():
        with taddons.context(gate) as tctx:
            tctx.configure(gate, max_concurrent_per_user="admin=1,faculty=1,staff=1,student=1")
            flows = []
            for index in range(3):  # one runs, one waits, the third is beyond the user's own bound
                flow, context = chat_flow()
                context.request_id, context.principal = f"req-{index}", batch_user
                flows.append(flow)
                asyncio.ensure_future(gate.request(flow))
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            outcomes.extend(flow.response.status_code if flow.response else None for flow in flows)
            gate.refuse_waiting(GatewayError(503, "test over"))

    asyncio.run(scenario())
    assert outcomes == [None, None, 429]


def run_shared(node: BackendView, scenario) -> None:
    """`scenario(gate, other)`: the gate shares a fresh prefix with another gateway, 'gateway-b'; both alive."""
    prefix = unique_prefix()

    async def main():
        gate = Gate(Registry(node), Writer(), 300, redis_url=REDIS_URL)
        gate.queue = SharedQueue(aioredis.Redis.from_url(REDIS_URL), prefix, "gateway-a", ttl_s=30)
        try:
            with taddons.context(gate) as tctx:
                for name, default in (("redis_timeout_ms", 500), ("policy_lease_ttl_s", 30)):
                    tctx.options.add_option(name, int, default, "")
                tctx.configure(gate)
                other = SharedQueue(gate.queue.client, prefix, "gateway-b", ttl_s=30)
                await other.tick([])
                await gate.heartbeat()
                assert gate.shared
                await scenario(gate, other)
        finally:
            await gate.queue.client.aclose()

    try:
        asyncio.run(main())
    finally:
        delete_prefix(prefix)


async def leases_of(gate: Gate) -> list[bytes]:
    return await gate.queue.client.zrange(f"{gate.queue.prefix}:backend:1:leases", 0, -1)


@requires_redis
def test_a_request_that_ends_while_the_gate_reconnects_to_redis_gives_its_lease_back_there():
    """Reconnecting, the gate asserts its running requests' slots in Redis again (the others' grants count
    them), Redis having lost them; one that ends before the gate shares again frees its slot there at once."""
    node = backend(1)
    flow, context = chat_flow()

    async def scenario(gate: Gate, other: SharedQueue):
        await gate.request(flow)
        assert context.backend is node and len(await leases_of(gate)) == 1
        gate.shared_failed("a test", ConnectionError("Redis went away"))
        await gate.queue.client.delete(f"{gate.queue.prefix}:backend:1:leases")  # ... and came back without them
        await gate.heartbeat()  # it waits for gateway-b to beat before it shares again
        assert not gate.shared and gate.reconnected_at is not None and len(await leases_of(gate)) == 1
        gate.response(flow)
        await asyncio.gather(*gate.tasks)
        assert await leases_of(gate) == []

    run_shared(node, scenario)


@requires_redis
def test_once_redis_answers_again_the_gate_grants_nothing_alone_and_shares_once_the_others_have_beaten():
    """Its share of the node would admit the request, but another gateway may still be granting alone on its
    own share: the request waits until that one has beaten, its slots registered, then the shared queue grants."""
    node = dataclasses.replace(backend(1), max_concurrent=2)
    flow, context = chat_flow()

    async def scenario(gate: Gate, other: SharedQueue):
        gate.shared_failed("a test", ConnectionError("Redis went away"))
        assert gate.share_of(backend_state(node)) == 1  # alone: half the node
        await gate.heartbeat()
        assert gate.share_of(backend_state(node)) == 0 and not gate.shared
        waiting = asyncio.ensure_future(gate.request(flow))
        await asyncio.sleep(0.1)
        assert not waiting.done() and context.request_id in gate.waiters
        await other.tick([])  # gateway-b beats after this one reconnected
        await gate.heartbeat()
        assert gate.shared
        await asyncio.wait_for(waiting, 2)
        assert context.backend is node and len(await leases_of(gate)) == 1

    run_shared(node, scenario)


@requires_redis
@pytest.mark.parametrize("sharing", [False, True], ids=["reconnecting", "sharing"])
def test_a_request_that_ends_while_its_lease_is_renewed_gives_the_lease_back(sharing):
    """The renewal carries the running requests as they were when it was sent: one that ends meanwhile gets its
    lease put back (after its release reached Redis, or, reconnecting, when it released nothing there). Its
    slot must not stay taken for every gateway until the lease expires."""
    node = backend(1)
    flow, context = chat_flow()

    async def scenario(gate: Gate, other: SharedQueue):
        await gate.request(flow)
        assert context.backend is node and len(await leases_of(gate)) == 1
        if not sharing:
            gate.shared_failed("a test", ConnectionError("Redis went away"))
        renew = gate.queue.renew

        async def request_ends_first(leases):
            gate.response(flow)
            await asyncio.gather(*gate.tasks)  # its release, if it sent one, is through before this renewal
            return await renew(leases)

        gate.queue.renew = request_ends_first
        await (gate.renew() if sharing else gate.heartbeat())
        gate.queue.renew = renew
        await asyncio.gather(*gate.tasks)
        assert await leases_of(gate) == []

    run_shared(node, scenario)
