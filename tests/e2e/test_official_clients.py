"""The official openai and ollama clients, through the real gateway, to the simulated node of their dialect."""

from __future__ import annotations

import time

import httpx
import ollama
import openai
import pytest

from sim import generation
from sim.stack import TOKENS_PER_S

OLLAMA_CHAT = "llama3.2"
OLLAMA_EMBED = "nomic-embed-text"
VLLM_CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
VLLM_EMBED = "intfloat/e5-small"


@pytest.fixture
def openai_client(cluster):
    return openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["student1"], max_retries=0)


@pytest.fixture
def ollama_client(cluster):
    return ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {cluster.keys['student1']}"})


def chat_prompt_tokens(*texts: str) -> int:
    return generation.count_chat_prompt_tokens([generation.Turn("user", text) for text in texts])


def test_openai_chat_returns_the_nodes_answer_and_usage(openai_client):
    prompt = "Name three rivers in Idaho."
    answer = openai_client.chat.completions.create(model=VLLM_CHAT, messages=[{"role": "user", "content": prompt}])
    assert answer.choices[0].message.content == generation.reply_text(VLLM_CHAT, prompt)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == chat_prompt_tokens(prompt)
    assert answer.usage.completion_tokens == len(generation.split_tokens(generation.reply_text(VLLM_CHAT, prompt)))


def test_openai_chat_stream_concatenates_to_the_non_streamed_answer(openai_client):
    prompt = "Describe the Palouse in one paragraph."
    chunks = list(openai_client.chat.completions.create(
        model=VLLM_CHAT, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == generation.reply_text(VLLM_CHAT, prompt)
    assert chunks[-1].usage.prompt_tokens == chat_prompt_tokens(prompt)
    assert len(chunks) > 3  # streamed piece by piece, not one blob


def test_openai_embeddings_default_base64_decode_to_the_nodes_vectors(openai_client):
    inputs = ["first document", "second, longer document about GPUs"]
    result = openai_client.embeddings.create(model=VLLM_EMBED, input=inputs)
    assert [item.index for item in result.data] == [0, 1]
    for item, text in zip(result.data, inputs):
        assert item.embedding == pytest.approx(generation.embedding_for(VLLM_EMBED, text), abs=1e-7)


def test_openai_models_lists_the_models_of_both_nodes(openai_client):
    listed = {model.id for model in openai_client.models.list()}
    assert VLLM_CHAT in listed and VLLM_EMBED in listed
    assert any(name.startswith(OLLAMA_CHAT) for name in listed)


def test_ollama_chat_returns_the_nodes_answer_and_counts(ollama_client):
    prompt = "Why is the sky blue?"
    answer = ollama_client.chat(model=OLLAMA_CHAT, messages=[{"role": "user", "content": prompt}], stream=False)
    assert answer.message.content == generation.reply_text(OLLAMA_CHAT, prompt)
    assert answer.model == OLLAMA_CHAT  # as typed, the way Ollama itself answers
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count == chat_prompt_tokens(prompt)
    assert answer.eval_count == len(generation.split_tokens(answer.message.content))


def test_ollama_chat_stream_concatenates_to_the_non_streamed_answer(ollama_client):
    prompt = "Tell me about wheat harvests."
    parts = list(ollama_client.chat(model=OLLAMA_CHAT, messages=[{"role": "user", "content": prompt}], stream=True))
    assert "".join(p.message.content for p in parts) == generation.reply_text(OLLAMA_CHAT, prompt)
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert len(parts) > 3


def test_ollama_generate_answers_response_chunks(ollama_client):
    prompt = "Write a haiku about snow."
    answer = ollama_client.generate(model=OLLAMA_CHAT, prompt=prompt, stream=False)
    assert answer.response == generation.reply_text(OLLAMA_CHAT, prompt)
    streamed = "".join(part.response for part in ollama_client.generate(model=OLLAMA_CHAT, prompt=prompt, stream=True))
    assert streamed == answer.response


def test_ollama_embed_keeps_batch_order(ollama_client):
    inputs = ["alpha", "beta gamma", "delta epsilon zeta"]
    result = ollama_client.embed(model=OLLAMA_EMBED, input=inputs)
    assert len(result.embeddings) == 3
    for vector, text in zip(result.embeddings, inputs):
        assert vector == pytest.approx(generation.embedding_for(OLLAMA_EMBED, text), abs=1e-6)


def test_ollama_list_shows_the_models_of_both_nodes(ollama_client):
    names = {model.model for model in ollama_client.list().models}
    assert f"{OLLAMA_CHAT}:latest" in names
    assert VLLM_CHAT in names


def test_missing_key_is_401_in_openai_shape(cluster):
    """The SDK refuses to send without a key, so this caller is curl-like."""
    response = httpx.get(f"{cluster.gateway_url}/v1/models")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and "API key" in error["message"]


def test_wrong_key_is_401_in_openai_shape(cluster):
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="mr_abcdefgh_" + "x" * 40, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=VLLM_CHAT, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["message"] == "invalid API key"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer mr_abcdefgh_" + "y" * 40}])
def test_missing_or_wrong_key_is_401_in_ollama_shape(cluster, headers):
    client = ollama.Client(host=cluster.gateway_url, headers=headers)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=OLLAMA_CHAT, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert caught.value.status_code == 401
    assert "API key" in caught.value.error


def test_unknown_model_is_404_in_each_dialect(openai_client, ollama_client):
    with pytest.raises(openai.NotFoundError) as from_openai:
        openai_client.chat.completions.create(model="llama9", messages=[{"role": "user", "content": "hi"}])
    assert "llama9" in from_openai.value.body["message"]
    with pytest.raises(ollama.ResponseError) as from_ollama:
        ollama_client.chat(model="llama9", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert from_ollama.value.status_code == 404 and "llama9" in from_ollama.value.error


def test_stream_reaches_the_client_as_the_node_paces_it(cluster):
    """Chunks pass through as the node produces them: their arrivals spread over the node's pacing."""
    headers = {"Authorization": f"Bearer {cluster.keys['faculty1']}"}
    body = {"model": OLLAMA_CHAT, "prompt": "count slowly " * 3, "options": {"num_predict": 40}, "stream": True}
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", f"{cluster.gateway_url}/api/generate", json=body, headers=headers, timeout=30) as response:
        for _ in response.iter_lines():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 10
    paced_for = (len(arrivals) - 2) / TOKENS_PER_S  # one line per token, the last line has none
    assert arrivals[-1] - arrivals[0] >= 0.5 * paced_for  # a buffered stream arrives all at once


def test_backend_never_sees_the_callers_key(cluster, ollama_client):
    ollama_client.chat(model=OLLAMA_CHAT, messages=[{"role": "user", "content": "private?"}], stream=False)
    seen = httpx.get(f"{cluster.ollama_url}/_sim/stats", timeout=5).json()
    last = [request for request in seen["recent"] if request["path"] == "/api/chat"][-1]
    headers = {name.lower(): value for name, value in last["headers"].items()}
    assert "authorization" not in headers and cluster.keys["student1"] not in str(last)
    assert headers["host"] == cluster.ollama_url.removeprefix("http://")


def test_health_and_readiness(cluster):
    assert httpx.get(f"{cluster.gateway_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{cluster.gateway_url}/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["healthy_backends"]) == {"sim-ollama", "sim-vllm"}


def test_public_page_is_served_by_the_admin_app_through_the_gateway(cluster):
    page = httpx.get(f"{cluster.gateway_url}/")
    assert page.status_code == 200
    assert "sim-ollama" in page.text and "sim-vllm" in page.text
