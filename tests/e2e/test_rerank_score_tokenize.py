"""vLLM's rerank, score and tokenize APIs through the gateway, to the vLLM node whose runner serves them."""

from __future__ import annotations

import httpx
import pytest

from sim import generation
from tests.integration.test_audit import audit_rows

VLLM_EMBED = "intfloat/e5-small"  # a pooling model: the node routes /rerank and /score
VLLM_CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
OLLAMA_CHAT = "llama3.2"
DOCUMENTS = ["bread and butter", "CUDA kernels on a GPU", "GPU memory bandwidth"]


def post(cluster, path: str, body: dict, user: str = "student1") -> httpx.Response:
    return httpx.post(f"{cluster.gateway_url}{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {cluster.keys[user]}"})


def best_first(query: str) -> list[int]:
    return sorted(range(len(DOCUMENTS)), key=lambda i: -generation.similarity(VLLM_EMBED, query, DOCUMENTS[i]))


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_orders_documents_by_relevance(cluster, path):
    answer = post(cluster, path, {"model": VLLM_EMBED, "query": "graphics cards", "documents": DOCUMENTS, "top_n": 2})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [result["index"] for result in results] == best_first("graphics cards")[:2]
    assert results[0]["relevance_score"] == pytest.approx(
        generation.similarity(VLLM_EMBED, "graphics cards", DOCUMENTS[results[0]["index"]]))


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_pairs_a_query_with_each_text(cluster, path):
    answer = post(cluster, path, {"model": VLLM_EMBED, "text_1": "graphics cards", "text_2": DOCUMENTS})
    assert answer.status_code == 200
    scores = [item["score"] for item in answer.json()["data"]]
    assert scores == pytest.approx([generation.similarity(VLLM_EMBED, "graphics cards", d) for d in DOCUMENTS])


@pytest.mark.parametrize("path", ["/v1/tokenize", "/tokenize"])
def test_tokenize_counts_the_prompt_for_a_generating_model(cluster, path):
    answer = post(cluster, path, {"model": VLLM_CHAT, "prompt": "the rolling hills of the Palouse"})
    assert answer.status_code == 200
    assert answer.json()["tokens"] == generation.token_ids("the rolling hills of the Palouse")
    assert answer.json()["count"] == 6


def test_an_ollama_model_has_no_rerank_and_says_so_in_openais_shape(cluster):
    answer = post(cluster, "/v1/rerank", {"model": OLLAMA_CHAT, "query": "q", "documents": ["a"]})
    assert answer.status_code == 400
    assert "no rerank API" in answer.json()["error"]["message"]


def test_a_malformed_call_is_refused_before_it_queues(cluster):
    answer = post(cluster, "/v1/rerank", {"model": VLLM_EMBED, "documents": ["a"]})
    assert answer.status_code in (400, 422) and "query" in answer.json()["error"]["message"]


def test_a_rerank_is_audited_with_the_tokens_vllm_counted(cluster):
    query = "an audited rerank about lentil harvests"
    answer = post(cluster, "/v1/rerank", {"model": VLLM_EMBED, "query": query, "documents": DOCUMENTS}, "faculty1")
    (row,) = audit_rows(cluster, query)
    assert (row.endpoint, row.backend_dialect, row.model, row.status) == ("/v1/rerank", "vllm", VLLM_EMBED, 200)
    assert (row.prompt_tokens, row.completion_tokens) == (answer.json()["usage"]["total_tokens"], 0)
    assert row.user.username == "faculty1"
