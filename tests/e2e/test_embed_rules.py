"""Embeddings follow each engine's own rule: Ollama embeds with any model it has, vLLM with a pooling model."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from sim import generation

OLLAMA_CHAT = "llama3.2"
VLLM_CHAT = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def ollama_client(cluster):
    return ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {cluster.keys['student1']}"})


@pytest.fixture
def openai_client(cluster):
    return openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["student1"], max_retries=0)


def test_ollama_embed_works_with_a_chat_model_as_on_a_real_ollama(ollama_client):
    inputs = ["the Palouse", "wheat fields in May"]
    result = ollama_client.embed(model=OLLAMA_CHAT, input=inputs)
    for vector, text in zip(result.embeddings, inputs):
        assert vector == pytest.approx(generation.embedding_for(OLLAMA_CHAT, text), abs=1e-6)


def test_legacy_api_embeddings_works_with_a_chat_model(ollama_client):
    result = ollama_client.embeddings(model=OLLAMA_CHAT, prompt="one prompt")
    assert result.embedding == pytest.approx(generation.embedding_for(OLLAMA_CHAT, "one prompt"), abs=1e-6)


def test_openai_embeddings_of_an_ollama_chat_model(openai_client):
    result = openai_client.embeddings.create(model=OLLAMA_CHAT, input=["a document"], encoding_format="float")
    assert result.data[0].embedding == pytest.approx(generation.embedding_for(OLLAMA_CHAT, "a document"), abs=1e-6)


def test_a_vllm_generating_model_refuses_embeddings_with_a_clean_openai_error(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.embeddings.create(model=VLLM_CHAT, input=["a document"])
    assert "does not support Embeddings API" in refused.value.message or "pooling" in refused.value.message


def test_a_vllm_refusal_reaches_an_ollama_caller_in_ollamas_shape(cluster):
    answer = httpx.post(f"{cluster.gateway_url}/api/embed", json={"model": VLLM_CHAT, "input": "x"},
                        headers={"Authorization": f"Bearer {cluster.keys['student1']}"}, timeout=30)
    assert answer.status_code == 400 and isinstance(answer.json()["error"], str)
