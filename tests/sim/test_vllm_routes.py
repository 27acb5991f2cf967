"""The simulated vLLM node routes what vLLM's runner serves, answers FastAPI's errors, tokenizes, scores, reranks."""

from __future__ import annotations

import pytest

from sim import generation

CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
EMBED = "intfloat/e5-small"


def test_an_unrouted_path_and_a_wrong_method_answer_fastapis_detail(start_node, http):
    url = start_node("vllm", models=(CHAT,))
    missing = http.post(f"{url}/v1/no-such-api", json={})
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = http.get(f"{url}/v1/chat/completions")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})


def test_a_generating_node_routes_no_pooling_api_and_says_so_in_its_openapi_document(start_node, http):
    url = start_node("vllm", models=(CHAT,))
    paths = http.get(f"{url}/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in paths and "/tokenize" in paths
    assert not {"/v1/embeddings", "/score", "/rerank"} & set(paths)
    assert http.post(f"{url}/v1/embeddings", json={"model": CHAT, "input": "a"}).json() == {"detail": "Not Found"}


def test_a_pooling_node_routes_embeddings_score_and_rerank_but_no_chat(start_node, http):
    url = start_node("vllm", models=(), embedding_models=(EMBED,))
    paths = http.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/score", "/v1/score", "/rerank", "/v1/rerank", "/tokenize"} <= set(paths)
    assert "/v1/chat/completions" not in paths


def test_tokenize_gives_ids_count_and_context_length(start_node, http):
    url = start_node("vllm", models=(CHAT,))
    answer = http.post(f"{url}/tokenize", json={"model": CHAT, "prompt": "the quick brown fox"}).json()
    assert answer == {"count": 4, "max_model_len": generation.CONTEXT_LENGTH,
                      "tokens": generation.token_ids("the quick brown fox"), "token_strs": None}


def test_score_pairs_one_text_with_many_by_embedding_similarity(start_node, http):
    url = start_node("vllm", models=(), embedding_models=(EMBED,))
    answer = http.post(f"{url}/score", json={"model": EMBED, "text_1": "gpu", "text_2": ["cuda", "bread"]}).json()
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert answer["data"][1]["score"] == pytest.approx(generation.similarity(EMBED, "gpu", "bread"))
    assert answer["usage"]["prompt_tokens"] == 4


def test_rerank_orders_documents_best_first_and_keeps_top_n(start_node, http):
    url = start_node("vllm", models=(), embedding_models=(EMBED,))
    documents = ["bread", "cuda kernels", "gpu memory"]
    answer = http.post(f"{url}/v1/rerank", json={"model": EMBED, "query": "gpu", "documents": documents,
                                                 "top_n": 2}).json()
    expected = sorted(range(3), key=lambda i: -generation.similarity(EMBED, "gpu", documents[i]))[:2]
    assert [result["index"] for result in answer["results"]] == expected
    assert answer["results"][0]["document"] == {"text": documents[expected[0]]}


def test_score_on_a_generating_model_is_refused_in_vllms_shape(start_node, http):
    url = start_node("vllm", models=(CHAT,), embedding_models=(EMBED,))
    refused = http.post(f"{url}/score", json={"model": CHAT, "text_1": "a", "text_2": "b"})
    assert refused.status_code == 400 and "does not support Score API" in refused.json()["error"]["message"]
