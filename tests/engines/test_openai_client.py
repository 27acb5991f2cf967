"""The official openai client through the gateway to real vLLM: the translation matrix's vLLM column.

Every answer is compared with vLLM's own answer to the same body sent straight to the engine:
greedy decoding (temperature 0, a seed) makes the text reproducible, and usage must be exactly the
engine's count, not an estimate.
"""

from __future__ import annotations

import openai
import pytest

MAX_TOKENS = 24
QUESTION = "Name one river in Idaho and say one thing about it."
EMBEDDING_INPUTS = [
    "The Snake River flows through southern Idaho.",
    "GPUs are shared fairly between users.",
    "a",
]


def chat_body(model: str, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


def completion_body(model: str, **extra) -> dict:
    return {
        "model": model,
        "prompt": "The three largest cities in Idaho are",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


def usage_counts(usage) -> tuple[int, int]:
    if isinstance(usage, dict):
        return usage["prompt_tokens"], usage["completion_tokens"]
    return usage.prompt_tokens, usage.completion_tokens


def test_models_lists_both_vllm_models(openai_client, chat_model, embedding_model):
    listed = {model.id for model in openai_client.models.list()}
    assert {chat_model, embedding_model} <= listed


def test_chat_text_and_usage_equal_vllms_own_answer(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", chat_body(chat_model))
    answer = openai_client.chat.completions.create(**chat_body(chat_model))
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    assert usage_counts(answer.usage) == usage_counts(direct["usage"])
    assert answer.model == chat_model


def test_chat_stream_concatenates_to_the_non_streamed_text_with_vllms_usage(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", chat_body(chat_model))
    chunks = list(
        openai_client.chat.completions.create(
            **chat_body(chat_model), stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == direct["choices"][0]["message"]["content"]
    assert len([chunk for chunk in chunks if chunk.choices]) > 3  # streamed token by token, not one blob
    finish = [
        chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason
    ]
    assert finish == [direct["choices"][0]["finish_reason"]]
    assert chunks[-1].choices == [] and usage_counts(chunks[-1].usage) == usage_counts(direct["usage"])


def test_chat_stream_without_include_usage_has_no_usage_chunk(openai_client, chat_model):
    # The gateway asks vLLM for usage to count tokens; a client that did not ask must not see it.
    chunks = list(openai_client.chat.completions.create(**chat_body(chat_model), stream=True))
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_completion_text_and_usage_equal_vllms_own_answer(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/completions", completion_body(chat_model))
    answer = openai_client.completions.create(**completion_body(chat_model))
    assert answer.object == "text_completion"
    assert answer.choices[0].text == direct["choices"][0]["text"]
    assert answer.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    assert usage_counts(answer.usage) == usage_counts(direct["usage"])


def test_completion_stream_concatenates_to_the_non_streamed_text(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/completions", completion_body(chat_model))
    chunks = list(
        openai_client.completions.create(
            **completion_body(chat_model), stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == direct["choices"][0]["text"]
    assert usage_counts(chunks[-1].usage) == usage_counts(direct["usage"])


def test_embeddings_default_base64_equal_vllms_vectors_in_order(openai_client, vllm, embedding_model):
    # The SDK asks for base64 unless told otherwise; vLLM's floats are float32, so they survive exactly.
    direct = vllm.answer("/v1/embeddings", {"model": embedding_model, "input": EMBEDDING_INPUTS})
    result = openai_client.embeddings.create(model=embedding_model, input=EMBEDDING_INPUTS)
    assert [item.index for item in result.data] == [0, 1, 2]
    for item, expected in zip(result.data, direct["data"], strict=True):
        assert len(item.embedding) == 384
        assert item.embedding == pytest.approx(expected["embedding"], abs=1e-6)
    assert result.usage.prompt_tokens == direct["usage"]["prompt_tokens"]


def test_embeddings_as_floats_equal_vllms_vectors(openai_client, vllm, embedding_model):
    text = EMBEDDING_INPUTS[0]
    direct = vllm.answer("/v1/embeddings", {"model": embedding_model, "input": text})
    result = openai_client.embeddings.create(model=embedding_model, input=text, encoding_format="float")
    assert result.data[0].embedding == pytest.approx(direct["data"][0]["embedding"], abs=1e-6)


def test_max_tokens_beyond_the_context_is_vllms_own_400(openai_client, vllm, chat_model):
    body = chat_body(chat_model, max_tokens=4096)  # the engine runs with --max-model-len 2048
    status, direct = vllm.error("/v1/chat/completions", body)
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.chat.completions.create(**body)
    assert status == raised.value.status_code == 400
    assert raised.value.body == direct["error"]  # message, type, param and code, as vLLM wrote them
    assert direct["error"]["type"] == "BadRequestError"


def test_embedding_input_beyond_the_context_is_vllms_own_400(openai_client, vllm, embedding_model):
    body = {"model": embedding_model, "input": "word " * 1000}  # all-MiniLM-L6-v2 takes 256 tokens
    status, direct = vllm.error("/v1/embeddings", body)
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.embeddings.create(**body, encoding_format="float")
    assert status == raised.value.status_code == 400
    assert raised.value.body["message"] == direct["error"]["message"]


def test_embeddings_from_the_chat_model_are_refused_as_vllm_would_before_queueing(openai_client, vllm, chat_model):
    # The chat engine's runner routes no /v1/embeddings (vLLM answers 404 {"detail": "Not Found"}); the
    # gateway reads that from the engine's /openapi.json and refuses with the reason before queueing.
    body = {"model": chat_model, "input": "hello"}
    status, direct = vllm.error("/v1/embeddings", body)
    assert (status, direct) == (404, {"detail": "Not Found"})
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.embeddings.create(**body, encoding_format="float")
    assert "does not produce embeddings" in raised.value.message
