"""The official ollama client through the gateway to real vLLM: Ollama requests translated both ways.

The gateway turns /api/chat and /api/generate into vLLM chat (or, for `raw`, completions) requests and
/api/embed into /v1/embeddings; the answers must be what vLLM itself answers to the equivalent OpenAI
body, in Ollama's shape: the same greedy text, `prompt_eval_count` / `eval_count` equal to vLLM's
usage, and vLLM's errors as `{"error": "message"}`.
"""

from __future__ import annotations

import ollama
import pytest

MAX_TOKENS = 24
QUESTION = "Name one river in Idaho and say one thing about it."
RAW_PROMPT = "The three largest cities in Idaho are"
OPTIONS = {"temperature": 0, "seed": 7, "num_predict": MAX_TOKENS}
EMBEDDING_INPUTS = [
    "The Snake River flows through southern Idaho.",
    "GPUs are shared fairly between users.",
    "a",
]
DONE_REASONS = {"stop": "stop", "length": "length"}


def vllm_chat_body(model: str, content: str = QUESTION, **extra) -> dict:
    """The OpenAI body an Ollama request with OPTIONS amounts to."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


def test_tags_list_both_vllm_models(ollama_client, chat_model, embedding_model):
    listed = {model.model for model in ollama_client.list().models}
    assert any(name in listed for name in (chat_model, f"{chat_model}:latest"))
    assert any(name in listed for name in (embedding_model, f"{embedding_model}:latest"))


def test_chat_text_and_counts_equal_vllms_own_answer(ollama_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", vllm_chat_body(chat_model))
    answer = ollama_client.chat(
        model=chat_model, messages=[{"role": "user", "content": QUESTION}], options=OPTIONS, stream=False
    )
    assert answer.message.role == "assistant"
    assert answer.message.content == direct["choices"][0]["message"]["content"]
    assert answer.done and answer.done_reason == DONE_REASONS[direct["choices"][0]["finish_reason"]]
    assert answer.prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert answer.eval_count == direct["usage"]["completion_tokens"]


def test_chat_stream_concatenates_to_the_non_streamed_text_with_vllms_counts(ollama_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", vllm_chat_body(chat_model))
    parts = list(
        ollama_client.chat(
            model=chat_model, messages=[{"role": "user", "content": QUESTION}], options=OPTIONS, stream=True
        )
    )
    assert "".join(part.message.content or "" for part in parts) == direct["choices"][0]["message"]["content"]
    assert len(parts) > 3  # streamed token by token, not one blob
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == DONE_REASONS[direct["choices"][0]["finish_reason"]]
    assert parts[-1].prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert parts[-1].eval_count == direct["usage"]["completion_tokens"]


def test_generate_applies_the_chat_template_like_ollama(ollama_client, vllm, chat_model):
    # Ollama's /api/generate templates the prompt, so on vLLM it is a one-message chat.
    direct = vllm.answer("/v1/chat/completions", vllm_chat_body(chat_model))
    answer = ollama_client.generate(model=chat_model, prompt=QUESTION, options=OPTIONS, stream=False)
    assert answer.response == direct["choices"][0]["message"]["content"]
    assert answer.done and answer.done_reason == DONE_REASONS[direct["choices"][0]["finish_reason"]]
    assert answer.prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert answer.eval_count == direct["usage"]["completion_tokens"]


def test_generate_stream_concatenates_to_the_non_streamed_text(ollama_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", vllm_chat_body(chat_model))
    parts = list(ollama_client.generate(model=chat_model, prompt=QUESTION, options=OPTIONS, stream=True))
    assert "".join(part.response for part in parts) == direct["choices"][0]["message"]["content"]
    assert parts[-1].done and parts[-1].eval_count == direct["usage"]["completion_tokens"]


def test_raw_generate_continues_the_prompt_like_vllm_completions(ollama_client, vllm, chat_model):
    direct = vllm.answer(
        "/v1/completions",
        {"model": chat_model, "prompt": RAW_PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7},
    )
    answer = ollama_client.generate(
        model=chat_model, prompt=RAW_PROMPT, raw=True, options=OPTIONS, stream=False
    )
    assert answer.response == direct["choices"][0]["text"]
    assert answer.prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert answer.eval_count == direct["usage"]["completion_tokens"]


def test_embed_batch_equals_vllms_vectors_in_order(ollama_client, vllm, embedding_model):
    direct = vllm.answer("/v1/embeddings", {"model": embedding_model, "input": EMBEDDING_INPUTS})
    result = ollama_client.embed(model=embedding_model, input=EMBEDDING_INPUTS)
    assert len(result.embeddings) == len(EMBEDDING_INPUTS)
    for vector, expected in zip(
        result.embeddings, sorted(direct["data"], key=lambda item: item["index"]), strict=True
    ):
        assert list(vector) == pytest.approx(expected["embedding"], abs=1e-6)
    assert result.prompt_eval_count == direct["usage"]["prompt_tokens"]


def test_legacy_embeddings_equal_vllms_vector(ollama_client, vllm, embedding_model):
    direct = vllm.answer("/v1/embeddings", {"model": embedding_model, "input": EMBEDDING_INPUTS[1]})
    result = ollama_client.embeddings(model=embedding_model, prompt=EMBEDDING_INPUTS[1])
    assert list(result.embedding) == pytest.approx(direct["data"][0]["embedding"], abs=1e-6)


def test_num_predict_beyond_the_context_is_vllms_400_in_ollamas_shape(ollama_client, vllm, chat_model):
    status, direct = vllm.error("/v1/chat/completions", vllm_chat_body(chat_model, max_tokens=4096))
    with pytest.raises(ollama.ResponseError) as raised:
        ollama_client.chat(
            model=chat_model,
            messages=[{"role": "user", "content": QUESTION}],
            options={**OPTIONS, "num_predict": 4096},
            stream=False,
        )
    assert status == raised.value.status_code == 400
    assert raised.value.error == direct["error"]["message"]  # a plain string, as Ollama's errors are


def test_streamed_request_vllm_refuses_is_an_http_error_not_a_broken_stream(ollama_client, vllm, chat_model):
    # vLLM refuses before streaming starts, so the client gets a status, not a mid-stream error line.
    status, direct = vllm.error(
        "/v1/chat/completions", vllm_chat_body(chat_model, max_tokens=4096, stream=True)
    )
    with pytest.raises(ollama.ResponseError) as raised:
        list(
            ollama_client.chat(
                model=chat_model,
                messages=[{"role": "user", "content": QUESTION}],
                options={**OPTIONS, "num_predict": 4096},
                stream=True,
            )
        )
    assert status == raised.value.status_code == 400
    assert raised.value.error == direct["error"]["message"]


def test_embed_input_beyond_the_context_is_vllms_400_in_ollamas_shape(ollama_client, vllm, embedding_model):
    text = "word " * 1000  # all-MiniLM-L6-v2 takes 256 tokens; vLLM has no truncate switch
    status, direct = vllm.error("/v1/embeddings", {"model": embedding_model, "input": [text]})
    with pytest.raises(ollama.ResponseError) as raised:
        ollama_client.embed(model=embedding_model, input=[text])
    assert status == raised.value.status_code == 400
    assert raised.value.error == direct["error"]["message"]


def test_embed_from_the_chat_model_is_refused_as_vllm_would_in_ollamas_shape(ollama_client, vllm, chat_model):
    # The chat engine's runner routes no /v1/embeddings (vLLM answers 404 {"detail": "Not Found"}); the
    # gateway reads that from the engine's /openapi.json and refuses with the reason before queueing.
    status, direct = vllm.error("/v1/embeddings", {"model": chat_model, "input": ["hello"]})
    assert (status, direct) == (404, {"detail": "Not Found"})
    with pytest.raises(ollama.ResponseError) as raised:
        ollama_client.embed(model=chat_model, input=["hello"])
    assert raised.value.status_code == 400 and "does not produce embeddings" in raised.value.error
