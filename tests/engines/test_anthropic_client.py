"""The official anthropic SDK through the gateway to real vLLM, measured against vLLM's own /v1/messages.

The gateway does not pass Messages through: it translates them to a chat and the answer back. vLLM
serves /v1/messages itself, so the same body sent straight to it is the reference: greedy decoding
(temperature 0) makes the text reproducible, and the counts must be the engine's, exactly.
"""

from __future__ import annotations

import anthropic
import pytest

MAX_TOKENS = 24
SYSTEM = "You are a geography tutor."
QUESTION = "Name one river in Idaho and say one thing about it."


@pytest.fixture
def anthropic_client(engines) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=engines.gateway_url, api_key=engines.key, max_retries=0, timeout=300)


def message_body(model: str) -> dict:
    return {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "system": SYSTEM,
            "messages": [{"role": "user", "content": QUESTION}]}


def sdk_arguments(model: str) -> dict:
    """The same body as the SDK's arguments: this SDK has no `temperature` parameter (newer Claude models take
    none), so it goes as an extra field, as a caller sets it for other models."""
    body = message_body(model)
    temperature = body.pop("temperature")
    return {**body, "extra_body": {"temperature": temperature}}


def text_of(content: list) -> str:
    return "".join(block["text"] for block in content if block["type"] == "text")


def test_message_text_stop_reason_and_usage_equal_vllms_own_messages_answer(anthropic_client, vllm, chat_model):
    direct = vllm.answer("/v1/messages", message_body(chat_model))
    message = anthropic_client.messages.create(**sdk_arguments(chat_model))
    assert message.content[0].text == text_of(direct["content"]) and message.content[0].text
    assert message.stop_reason == direct["stop_reason"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        direct["usage"]["input_tokens"], direct["usage"]["output_tokens"])
    assert message.model == chat_model


def test_message_stream_gives_vllms_text_and_usage(anthropic_client, vllm, chat_model):
    direct = vllm.answer("/v1/messages", message_body(chat_model))
    with anthropic_client.messages.stream(**sdk_arguments(chat_model)) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == text_of(direct["content"]) and len(pieces) > 3
    assert final.stop_reason == direct["stop_reason"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        direct["usage"]["input_tokens"], direct["usage"]["output_tokens"])


def test_count_tokens_equals_vllms_own_count(anthropic_client, vllm, chat_model):
    body = {key: value for key, value in message_body(chat_model).items() if key in ("model", "system", "messages")}
    direct = vllm.answer("/v1/messages/count_tokens", body)
    assert anthropic_client.messages.count_tokens(**body).input_tokens == direct["input_tokens"]
