"""One addon's failing hook never skips the next addon's: the end of a flow always runs. The chain hands each
hook to the addons that have it, in order."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from mitmproxy import hooks
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from addons.context import CONTEXT_KEY, RequestContext, Route
from addons.guard import Chain


class Exploding:
    """Stands for any addon with a bug: every flow hook raises."""

    def request(self, flow):
        raise RuntimeError("bug in request")

    def response(self, flow):
        raise RuntimeError("bug in response")

    async def error(self, flow):
        raise RuntimeError("bug in error")


class Ending:
    """Stands for Gate, Policy and Record: what must run at the end of every flow."""

    name = "ending"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, flow):
        self.seen.append("request")

    def response(self, flow):
        self.seen.append("response")

    def error(self, flow):
        self.seen.append("error")


class Script:
    """What mitmproxy makes of `-s addons/mindrouter.py`: one addon whose children are ours."""

    def __init__(self, children) -> None:
        self.addons = children


def inference_flow(path: str = "/v1/chat/completions"):
    flow = tflow.tflow(resp=True)
    flow.request.path = path
    flow.metadata[CONTEXT_KEY] = RequestContext("req-1", Route("inference", "openai", path), "127.0.0.1")
    return flow


def run(children, hook: hooks.Hook) -> None:
    async def scenario():
        with taddons.context() as tctx:
            tctx.master.addons.add(Script(children))
            await tctx.master.addons.handle_lifecycle(hook)

    asyncio.run(scenario())


@pytest.mark.parametrize("hook", [HttpResponseHook, HttpErrorHook])
def test_an_addon_after_a_failing_one_still_sees_the_end_of_the_flow(hook):
    ending = Ending()
    run([Chain(Exploding(), ending)], hook(inference_flow()))
    assert ending.seen == [hook.name]


def test_without_the_guard_mitmproxy_skips_the_addons_after_a_failing_one():
    """Why the guard exists: this is mitmproxy's own behaviour for a script's children."""
    ending = Ending()
    run([Exploding(), ending], HttpResponseHook(inference_flow()))
    assert ending.seen == []


def test_a_failing_request_hook_answers_500_in_the_callers_dialect_and_the_flow_goes_no_further():
    flow = inference_flow("/v1/chat/completions")
    flow.response = None
    ending = Ending()
    run([Chain(Exploding(), ending)], HttpRequestHook(flow))
    assert flow.response.status_code == 500
    error = json.loads(flow.response.content)["error"]
    assert error["code"] == "internal_error" and "req-1" in error["message"]
    assert ending.seen == ["request"]  # it runs, and finds the flow answered


def test_an_ollama_caller_gets_the_500_in_ollamas_shape():
    flow = inference_flow("/api/chat")
    flow.metadata[CONTEXT_KEY] = RequestContext("req-2", Route("inference", "ollama", "/api/chat"), "127.0.0.1")
    flow.response = None
    run([Chain(Exploding())], HttpRequestHook(flow))
    assert flow.response.status_code == 500 and isinstance(json.loads(flow.response.content)["error"], str)


class Starting:
    """An addon with an async request hook and a sync response hook, as the gateway's have."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def request(self, flow):
        await asyncio.sleep(0)
        self.seen.append("starting.request")

    def response(self, flow):
        self.seen.append("starting.response")


def test_the_chain_hands_each_hook_to_the_addons_that_have_it_in_their_order():
    ending = Ending()
    chain = Chain(Starting(ending.seen), ending)
    assert chain.client_connected is None and chain.update is None  # hooks no addon has: mitmproxy skips a None
    assert inspect.iscoroutinefunction(chain.request) and not inspect.iscoroutinefunction(chain.response)
    run([chain], HttpRequestHook(inference_flow()))
    run([chain], HttpResponseHook(inference_flow()))
    assert ending.seen == ["starting.request", "request", "starting.response", "response"]


def test_the_chain_loads_and_configures_every_addon():
    class Configured:
        def __init__(self) -> None:
            self.configured: set[str] = set()

        def load(self, loader):
            loader.add_option("chain_test_option", int, 7, "an option of one addon of the chain")

        def configure(self, updated):
            self.configured |= updated

    first, second = Configured(), Configured()
    second.load = lambda loader: None
    with taddons.context(Chain(first, second)) as tctx:
        tctx.configure(first, chain_test_option=8)
        assert tctx.options.chain_test_option == 8
    assert "chain_test_option" in first.configured and "chain_test_option" in second.configured
