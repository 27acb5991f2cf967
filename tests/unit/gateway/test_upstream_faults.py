"""Failover and breakers count engine faults only; a caller who left is not served."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiohttp import web
from mitmproxy.test import taddons, tflow
from prometheus_client import REGISTRY

from addons.context import CONTEXT_KEY, RequestContext, Route
from addons.registry import BackendView
from addons.upstream import Upstream
from tests.support.upstream_fakes import Gate, Registry, backend, context_for
from translators.pipeline import parse_client_request

ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "qwen",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


@contextlib.asynccontextmanager
async def nodes(statuses: dict[str, int], calls: list[str]):
    """A real HTTP server per node name, answering every request with its status (an answer, or an error);
    each call is recorded as node name + path. Yields the node name → URL map."""
    runners, urls = [], {}
    for name, status in statuses.items():
        async def answer(request: web.Request, name=name, status=status) -> web.Response:
            calls.append(name + request.path)
            return web.json_response(ANSWER if status == 200 else {"error": f"status {status}"}, status=status)

        app = web.Application()
        app.router.add_post("/{path:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[name] = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
    try:
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


def at(urls: dict[str, str], view: BackendView) -> BackendView:
    view.url = urls.get(view.name, view.url)
    return view


def open_with(statuses: dict[str, int], gate: Gate, first: BackendView, **options):
    """`upstream.open` of a request to `first`, the gate's spares behind it, with nodes answering `statuses`:
    its outcome ((status, body, media type) or the status of the answer it took), the registry and the calls."""
    registry, calls = Registry(), []
    upstream = Upstream(registry, gate)

    async def scenario():
        async with nodes(statuses, calls) as urls:
            for view in (first, *gate.spare):
                at(urls, view)
            with taddons.context(upstream) as tctx:
                tctx.configure(upstream, **options)
                outcome = await upstream.open(context_for(first))
            if isinstance(outcome, tuple):
                return outcome
            outcome.close()
            return outcome.head.status

    return asyncio.run(scenario()), registry, [call.split("/")[0] for call in calls]


def test_no_other_backend_is_sought_after_the_last_attempt():
    gate = Gate(backend(2))
    outcome, registry, calls = open_with({"node-1": 503}, gate, backend(1), failover_attempts=0)
    assert outcome[0] == 503 and calls == ["node-1"]
    assert gate.transfers == 0  # it used to wait for a slot elsewhere, only to return the old failure untried
    assert registry.failed_backends == ["node-1"]


def test_an_engine_fault_moves_the_request_and_counts_against_its_backend():
    outcome, registry, calls = open_with({"node-1": 503, "node-2": 200}, Gate(backend(2)), backend(1))
    assert outcome == 200 and calls == ["node-1", "node-2"]
    assert registry.failed_backends == ["node-1"]


def test_the_backend_request_is_built_once_per_backend(monkeypatch):
    built = []
    real_build = __import__("addons.upstream", fromlist=["build_backend_request"]).build_backend_request
    monkeypatch.setattr("addons.upstream.build_backend_request", lambda *args: built.append(args[1]) or real_build(*args))
    context = context_for(backend(1))
    upstream = Upstream(Registry(), Gate())
    with taddons.context(upstream):
        first = upstream.backend_request(context, context.backend)  # the request hook's check
        assert upstream.backend_request(context, context.backend) is first and len(built) == 1  # the first attempt's
        upstream.backend_request(context, backend(2))  # a failover builds for its backend
    assert len(built) == 2


def test_a_failover_from_an_engine_serving_the_messages_api_to_one_that_does_not_translates_there():
    native = backend(1)
    native.native_endpoints = ("/v1/messages", "/v1/messages/count_tokens")
    context = RequestContext("req-1", Route("inference", "anthropic", "/v1/messages"), "127.0.0.1")
    context.canonical = parse_client_request(
        "/v1/messages", b'{"model": "qwen", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}')
    context.model, context.stream, context.backend = "qwen", False, native
    spare = backend(2)
    upstream, paths = Upstream(Registry(), Gate(spare)), []

    async def scenario():
        async with nodes({"node-1": 503, "node-2": 200}, paths) as urls:
            at(urls, native), at(urls, spare)
            with taddons.context(upstream):
                return await upstream.fetch_whole(context)

    status, body, _ = asyncio.run(scenario())
    assert paths == ["node-1/v1/messages", "node-2/v1/chat/completions"]
    status, message = context.translator.translate_body(status, body)
    assert status == 200 and b'"type":"message"' in message and b'"text":"hello"' in message


def test_a_500_counts_against_its_backend_only_when_another_backend_answers():
    outcome, registry, calls = open_with({"node-1": 500, "node-2": 200}, Gate(backend(2)), backend(1))
    assert outcome == 200 and registry.failed_backends == ["node-1"]


def test_a_request_two_engines_fail_with_500_is_not_replayed_further_nor_blamed_on_either():
    outcome, registry, calls = open_with({"node-1": 500, "node-2": 500, "node-3": 200},
                                         Gate(backend(2), backend(3)), backend(1), failover_attempts=2)
    assert outcome[0] == 500 and calls == ["node-1", "node-2"]
    assert registry.failed_backends == []


def test_a_500_from_the_only_backend_of_a_model_is_its_answer_and_opens_no_breaker():
    outcome, registry, calls = open_with({"node-1": 500}, Gate(), backend(1))
    assert outcome[0] == 500 and registry.failed_backends == []


@pytest.mark.parametrize("killed_already", [False, True], ids=["alive", "killed by mitmproxy"])
def test_a_caller_who_left_before_its_turn_upstream_is_never_sent_to_a_backend(killed_already):
    """Whether or not mitmproxy already killed the flow when the caller's connection closed (then the
    flow is no longer killable, and killing it again would raise)."""
    calls: list[str] = []
    upstream = Upstream(Registry(), Gate())
    flow = tflow.tflow()
    flow.client_conn.timestamp_end = time.time()
    if killed_already:
        flow.kill()

    async def scenario():
        async with nodes({"node-1": 200}, calls) as urls:
            flow.metadata[CONTEXT_KEY] = context_for(at(urls, backend(1)))
            with taddons.context(upstream):
                await upstream.request(flow)

    asyncio.run(scenario())
    assert calls == [] and flow.error is not None and flow.response is None


def label_values(metric: str, label: str) -> set[str]:
    return {sample.labels[label] for family in REGISTRY.collect() if family.name == metric
            for sample in family.samples if label in sample.labels}


@pytest.mark.parametrize("model", ["qwen", "made-up-model-7f3a"])
def test_metrics_are_labelled_with_served_models_only(model):
    upstream = Upstream(Registry(), Gate())
    flow = tflow.tflow(resp=True)
    flow.response.status_code = 404
    context = RequestContext("req-2", Route("inference", "openai", "/v1/chat/completions"), "127.0.0.1")
    context.model = model
    flow.metadata[CONTEXT_KEY] = context
    upstream.response(flow)
    assert context.model_label == ("qwen" if model == "qwen" else "unknown")
    assert "made-up-model-7f3a" not in label_values("mindrouter_requests", "model")
