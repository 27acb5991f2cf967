"""Embeddings: batches keep their order, OpenAI's base64 encoding, Ollama's legacy endpoint."""

import base64
import json
import struct

import pytest

from translators.pipeline import build_backend_request, parse_client_request, response_translator

# The "Request (Multiple input)" answer of /api/embed in ollama/ollama docs/api.md (with a count added).
OLLAMA_EMBED_ANSWER = {
    "model": "all-minilm",
    "embeddings": [
        [0.010071029, -0.0017594862, 0.05007221, 0.04692972, 0.054916814],
        [-0.0098027075, 0.06042469, 0.025257962, -0.006364387, 0.07272725],
    ],
    "prompt_eval_count": 16,
}
# The embedding object of the OpenAI API reference, batched and answered out of order on purpose.
VLLM_EMBEDDINGS_ANSWER = {
    "object": "list",
    "data": [
        {"object": "embedding", "embedding": [0.5, 0.25], "index": 1},
        {"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0},
    ],
    "model": "text-embedding-ada-002",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}


def run(path: str, engine: str, body: dict, answer: dict):
    req = parse_client_request(path, json.dumps(body).encode())
    backend_path, backend_body = build_backend_request(req, engine, "req-1")
    translator = response_translator(req, engine, "req-1", 1700000000)
    status, out = translator.translate_body(200, json.dumps(answer).encode())
    assert status == 200
    return backend_path, json.loads(backend_body), translator, json.loads(out)


def float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def test_openai_client_gets_ollama_vectors_as_little_endian_float32_base64_by_default_of_the_sdk():
    body = {
        "model": "all-minilm",
        "input": ["Why is the sky blue?", "Why is the grass green?"],
        "encoding_format": "base64",
    }
    path, backend_body, translator, out = run("/v1/embeddings", "ollama", body, OLLAMA_EMBED_ANSWER)
    assert (path, backend_body) == ("/api/embed", {"model": "all-minilm", "input": body["input"]})
    decoded = [list(struct.unpack("<5f", base64.b64decode(item["embedding"]))) for item in out["data"]]
    assert decoded == [float32(vector) for vector in OLLAMA_EMBED_ANSWER["embeddings"]]
    assert [item["index"] for item in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 16, "total_tokens": 16}
    assert translator.usage.prompt_tokens == 16


def test_openai_client_asking_for_floats_gets_floats():
    _, _, _, out = run(
        "/v1/embeddings",
        "ollama",
        {"model": "m", "input": "x", "encoding_format": "float"},
        OLLAMA_EMBED_ANSWER,
    )
    assert out["data"][0]["embedding"] == OLLAMA_EMBED_ANSWER["embeddings"][0]
    assert out["object"] == "list"


def test_ollama_client_gets_vllm_vectors_in_input_order_with_the_prompt_count():
    body = {"model": "m", "input": ["first", "second"]}
    path, backend_body, translator, out = run("/api/embed", "vllm", body, VLLM_EMBEDDINGS_ANSWER)
    assert path == "/v1/embeddings"
    assert backend_body["encoding_format"] == "float"
    assert out == {
        "model": "m",
        "embeddings": [[0.0023064255, -0.009327292], [0.5, 0.25]],
        "prompt_eval_count": 8,
    }
    assert translator.usage.prompt_tokens == 8


def test_vllm_base64_vectors_reach_an_ollama_client_as_floats():
    answer = {
        "data": [{"index": 0, "embedding": base64.b64encode(struct.pack("<2f", 0.5, -2.0)).decode()}],
        "usage": {"prompt_tokens": 3},
    }
    _, _, _, out = run("/api/embed", "vllm", {"model": "m", "input": "x"}, answer)
    assert out["embeddings"] == [[0.5, -2.0]]


@pytest.mark.parametrize("engine", ["ollama", "vllm"])
def test_legacy_embeddings_answer_with_one_vector_and_still_count_tokens(engine):
    answer = OLLAMA_EMBED_ANSWER if engine == "ollama" else VLLM_EMBEDDINGS_ANSWER
    # Request of the "Generate Embedding" (/api/embeddings) example in ollama/ollama docs/api.md.
    body = {"model": "all-minilm", "prompt": "Here is an article about llamas..."}
    path, backend_body, translator, out = run("/api/embeddings", engine, body, answer)
    assert path == ("/api/embed" if engine == "ollama" else "/v1/embeddings")
    assert backend_body["input"] == ["Here is an article about llamas..."]
    assert out == {
        "embedding": answer["embeddings"][0] if engine == "ollama" else [0.0023064255, -0.009327292]
    }
    assert translator.usage.prompt_tokens == (16 if engine == "ollama" else 8)


def test_openai_to_vllm_embeddings_pass_through_untouched():
    req = parse_client_request(
        "/v1/embeddings", json.dumps({"model": "m", "input": ["a"], "encoding_format": "base64"}).encode()
    )
    _, backend_body = build_backend_request(req, "vllm", "req-1")
    assert json.loads(backend_body)["encoding_format"] == "base64"
    raw = json.dumps(VLLM_EMBEDDINGS_ANSWER).encode()
    translator = response_translator(req, "vllm", "req-1", 1)
    assert translator.translate_body(200, raw) == (200, raw)
    assert translator.usage.prompt_tokens == 8
