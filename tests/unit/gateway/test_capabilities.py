"""Requests a model cannot take are refused with a reason, from the capabilities its nodes report."""

from __future__ import annotations

import json

from addons.gate import capability_refusal
from addons.polling import (
    capabilities_from_openapi,
    capabilities_from_show,
    ollama_native_endpoints,
    parse_vllm_metrics,
    routes_served,
)
from translators.pipeline import parse_client_request


def chat(**extra):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi", **extra}], "stream": False}
    return parse_client_request("/api/chat", json.dumps(body).encode())


def embed():
    return parse_client_request("/api/embed", b'{"model": "m", "input": ["a"]}')


def test_nothing_is_refused_when_no_node_describes_the_model():
    assert capability_refusal(chat(images=["aGk="]), "m", []) is None
    assert capability_refusal(chat(images=["aGk="]), "m", [("ollama", set())]) is None


def test_images_need_vision_and_chat_needs_a_completion_model():
    assert capability_refusal(chat(images=["aGk="]), "m", [("ollama", {"completion"})]) == "model 'm' does not accept images"
    assert capability_refusal(chat(images=["aGk="]), "m", [("ollama", {"completion", "vision"})]) is None
    assert "embedding model" in capability_refusal(chat(), "m", [("ollama", {"embedding"})])
    assert "embedding model" in capability_refusal(chat(), "m", [("vllm", {"embedding", "score", "tokenize"})])


def test_ollama_embeds_with_any_model_as_its_embed_handler_asks_for_no_capability():
    assert capability_refusal(embed(), "m", [("ollama", {"completion", "tools"})]) is None


def test_vllm_embeds_only_with_a_pooling_runner():
    assert "does not produce embeddings" in capability_refusal(embed(), "m", [("vllm", {"completion", "tokenize"})])
    assert capability_refusal(embed(), "m", [("vllm", {"embedding", "tokenize"})]) is None
    # one backend that can is enough
    assert capability_refusal(embed(), "m", [("vllm", {"completion"}), ("ollama", {"completion"})]) is None


def test_vllm_routes_in_its_openapi_document_are_its_capabilities():
    # vLLM's FastAPI app lists the routes of the tasks its runner supports (a pooling runner shown here).
    document = {"paths": {"/v1/embeddings": {}, "/score": {}, "/v1/score": {}, "/rerank": {}, "/tokenize": {},
                          "/v1/models": {}}}
    assert capabilities_from_openapi(document) == ("embedding", "score", "rerank", "tokenize")


def test_ollama_show_gives_capabilities_and_context_length():
    # Shape from the Ollama API reference (docs/api.md, "Show Model Information").
    show = {"capabilities": ["completion", "vision"], "model_info": {"llama.context_length": 131072}}
    assert capabilities_from_show(show) == (("completion", "vision"), 131072)


def test_vllm_metrics_are_summed_over_models_and_give_the_kv_cache_and_prefix_hit_rate():
    # Metric names as vLLM's /metrics exposes them (docs: "Production Metrics").
    text = "\n".join([
        'vllm:num_requests_running{model_name="a"} 2.0', 'vllm:num_requests_running{model_name="b"} 1.0',
        'vllm:num_requests_waiting{model_name="a"} 4.0', 'vllm:kv_cache_usage_perc{model_name="a"} 0.25',
        'vllm:prefix_cache_queries_total{model_name="a"} 200.0', 'vllm:prefix_cache_hits_total{model_name="a"} 50.0',
    ]) + "\n"
    load = parse_vllm_metrics(text)
    assert (load.running, load.waiting, load.kv_cache_usage, load.prefix_cache_hit_rate) == (3, 4, 0.25, 0.25)


def test_rerank_score_and_tokenize_go_only_to_vllm_nodes_that_route_them():
    rerank = parse_client_request("/v1/rerank", b'{"model": "m", "query": "q", "documents": ["a"]}')
    assert "no rerank API" in capability_refusal(rerank, "m", [("ollama", {"completion"})])
    assert "does not serve rerank" in capability_refusal(rerank, "m", [("vllm", {"completion", "tokenize"})])
    assert capability_refusal(rerank, "m", [("vllm", {"embedding", "rerank", "score"})]) is None
    tokenize = parse_client_request("/tokenize", b'{"model": "m", "prompt": "hi"}')
    assert capability_refusal(tokenize, "m", [("vllm", {"completion", "tokenize"})]) is None


def test_the_messages_api_is_native_where_vllm_routes_it_and_from_ollama_0_14():
    generating = {"paths": {"/v1/chat/completions": {}, "/v1/messages": {}, "/v1/messages/count_tokens": {}}}
    assert routes_served(generating) == (("completion",), ("/v1/messages", "/v1/messages/count_tokens"))
    assert routes_served({"paths": {"/v1/chat/completions": {}}}) == (("completion",), ())
    assert routes_served(None) == ((), ())  # no OpenAPI document: the node says nothing
    assert ollama_native_endpoints("0.14.0") == ollama_native_endpoints("0.15.2-rc1") == ("/v1/messages",)
    assert ollama_native_endpoints("0.13.5") == ollama_native_endpoints("0.9.10") == ()
    assert ollama_native_endpoints(None) == ollama_native_endpoints("unknown") == ()
