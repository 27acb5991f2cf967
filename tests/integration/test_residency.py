"""Residency through the real gateway: a request goes where its model is already in memory, and the gateway
learns what a node loaded and evicted from the node's `/api/ps` as soon as it answers, so Ollama nodes don't
thrash loading and evicting models."""

from __future__ import annotations

import httpx
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sim.stack import PYTHON, Service, free_port, wait_until
from tests.support.cluster import NO_LIMITS, start_cluster

TWO_MODELS = ("llama3.2", "mistral")
THIRD_MODEL = "phi3"
MODELS = (*TWO_MODELS, THIRD_MODEL)  # the stack's own nodes are disabled: only the two below serve these
POLL_S = 10  # full polls are rare here: what the gateway knows of residency between them it learnt itself


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The usual stack with its own nodes disabled, and two Ollama nodes that each hold one model at a time
    and take 0.3 s to load one."""
    work_dir = tmp_path_factory.mktemp("residency")
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'db.sqlite'}",
                          gateway_options=(f"backend_poll_s={POLL_S}", *NO_LIMITS))
    admin = {"Authorization": f"Bearer {stack.keys['admin']}"}
    started = {}
    for name in ("gpu-a", "gpu-b"):
        port = free_port()
        node = started[name] = Service(name, [
            PYTHON, "-m", "sim", "ollama", "--port", str(port), "--models", ",".join(MODELS),
            "--max-loaded", "1", "--load-ms", "300", "--tokens-per-s", "0"], {}, work_dir)
        node.url = f"http://127.0.0.1:{port}"
        node.wait_http(f"{node.url}/api/version")
        registered = httpx.post(f"{stack.gateway_url}/admin/backends/register", headers=admin, json={
            "name": name, "url": node.url, "engine": "ollama", "max_concurrent": 2})
        assert registered.status_code == 201, registered.text
    for backend_id in (1, 2):
        assert httpx.post(f"{stack.gateway_url}/admin/backends/{backend_id}/disable", headers=admin).is_success
    wait_until(lambda: set(httpx.get(f"{stack.gateway_url}/readyz").json()["healthy_backends"]) == set(started),
               2 * POLL_S + 10, "only the two new nodes serving")
    stack.nodes = started
    yield stack
    for node in started.values():
        node.stop()
    stack.stop()


def node_stats(node) -> dict:
    return httpx.get(f"{node.url}/_sim/stats").json()


def resident_by_gateway(stack) -> dict[str, set[str]]:
    """Which model each node holds, as the gateway's `mindrouter_model_resident` gauges say."""
    held: dict[str, set[str]] = {name: set() for name in stack.nodes}
    for family in text_string_to_metric_families(httpx.get(f"{stack.gateway_url}/metrics").text):
        for sample in family.samples:
            if sample.name == "mindrouter_model_resident" and sample.value == 1 and sample.labels["backend"] in held:
                held[sample.labels["backend"]].add(sample.labels["model"])
    return held


def test_alternating_models_each_stay_on_the_node_that_loaded_them(nodes):
    client = ollama.Client(host=nodes.gateway_url, headers={"Authorization": f"Bearer {nodes.keys['faculty1']}"})
    for _ in range(8):
        for model in TWO_MODELS:
            answer = client.generate(model=model, prompt="Which river?", options={"num_predict": 4})
            assert answer.done and answer.response

    stats = {name: node_stats(node) for name, node in nodes.nodes.items()}
    # Each model was loaded once, each on its own node, and every later request found it there.
    assert sorted(sum(s["loads"].values()) for s in stats.values()) == [1, 1], stats
    assert {model for s in stats.values() for model in s["loaded"]} == {f"{m}:latest" for m in TWO_MODELS}
    for s in stats.values():
        generated = {call["body"]["model"] for call in s["recent"] if call["path"] == "/api/generate"}
        assert len(generated) == 1, s["recent"]


def test_a_node_that_swaps_models_is_reread_at_once_not_at_the_next_poll(nodes):
    """Each node holds one of two models; a third model evicts one of them. The gateway knows which, and
    that the evicted model is gone, as soon as the node answers: long before its next full poll."""
    client = ollama.Client(host=nodes.gateway_url, headers={"Authorization": f"Bearer {nodes.keys['faculty1']}"})
    for model in TWO_MODELS:
        client.generate(model=model, prompt="warm", options={"num_predict": 1})
    before = resident_by_gateway(nodes)
    assert sorted(before.values(), key=sorted) == sorted(({f"{m}:latest"} for m in TWO_MODELS), key=sorted)
    # Start just after a full poll, so that the next one is far off.
    polls = {name: node_stats(node)["requests"].get("/api/tags", 0) for name, node in nodes.nodes.items()}
    wait_until(lambda: all(node_stats(node)["requests"].get("/api/tags", 0) > polls[name]
                           for name, node in nodes.nodes.items()), POLL_S + 5, "a full poll")
    polls_before = {name: node_stats(node)["requests"].get("/api/tags", 0) for name, node in nodes.nodes.items()}

    client.generate(model=THIRD_MODEL, prompt="swap", options={"num_predict": 1})

    holder = next(name for name, node in nodes.nodes.items() if node_stats(node)["loaded"] == [f"{THIRD_MODEL}:latest"])
    wait_until(lambda: resident_by_gateway(nodes)[holder] == {f"{THIRD_MODEL}:latest"}, 5,
               f"the gateway to see that {holder} now holds {THIRD_MODEL} only")
    assert {name: node_stats(node)["requests"].get("/api/tags", 0) for name, node in nodes.nodes.items()} \
        == polls_before, "a full poll happened meanwhile: this run does not show the re-read"
