"""The official anthropic SDK through the gateway to real vLLM, measured against vLLM's own /v1/messages.

Every test runs by both routes a Messages request takes to vLLM: `native`, the gateway that passes it to
vLLM's own Messages API, and `translated`, a gateway with `native_messages_api=false` that translates it
to vLLM's chat and the answer back. The same body sent straight to vLLM's /v1/messages is the reference
for both: greedy decoding (temperature 0) makes the text reproducible, and the counts must be the
engine's, exactly; equal input counts mean both routes rendered the same prompt.

The tier's SmolLM2 has no vision, no reasoning parser and cannot call a tool reliably, so images are
measured by vLLM's own refusal, thinking by vLLM's refusal (native) and an unchanged answer
(translated), and tools by a conversation that carries a tool call and its result (tool definitions,
the call and the result all reach the template).
"""

from __future__ import annotations

import base64

import anthropic
import pytest

MAX_TOKENS = 24
SYSTEM = "You are a geography tutor."
QUESTION = "Name one river in Idaho and say one thing about it."
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOL_CONVERSATION = [
    {"role": "user", "content": "What is the weather in Boise?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"city": "Boise"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 degrees and rain"}]},
]
PNG = base64.b64encode(base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")).decode()


@pytest.fixture(params=["native", "translated"])
def route(request, engines, translating_gateway_url) -> tuple[anthropic.Anthropic, bool]:
    native = request.param == "native"
    base_url = engines.gateway_url if native else translating_gateway_url
    return anthropic.Anthropic(base_url=base_url, api_key=engines.key, max_retries=0, timeout=300), native


def message_body(model: str, **fields) -> dict:
    return {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "system": SYSTEM,
            "messages": [{"role": "user", "content": QUESTION}], **fields}


def sdk_arguments(body: dict) -> dict:
    """The same body as the SDK's arguments: this SDK has no `temperature` parameter (newer Claude models take
    none), so it goes as an extra field, as a caller sets it for other models."""
    body = dict(body)
    temperature = body.pop("temperature")
    return {**body, "extra_body": {"temperature": temperature}}


def text_of(content: list) -> str:
    return "".join(block["text"] for block in content if block["type"] == "text")


def assert_same_answer(message, direct: dict) -> None:
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text == text_of(direct["content"]) and text
    assert message.stop_reason == direct["stop_reason"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        direct["usage"]["input_tokens"], direct["usage"]["output_tokens"])


def test_message_text_stop_reason_and_usage_equal_vllms_own_messages_answer(route, vllm, chat_model):
    client, native = route
    body = message_body(chat_model)
    message = client.messages.create(**sdk_arguments(body))
    assert_same_answer(message, vllm.answer("/v1/messages", body))
    assert message.model == chat_model
    assert message.id.startswith("chatcmpl-" if native else "msg_")  # vLLM's own answer, or the gateway's


def test_message_stream_gives_vllms_text_and_usage(route, vllm, chat_model):
    client, _ = route
    body = message_body(chat_model)
    direct = vllm.answer("/v1/messages", body)
    with client.messages.stream(**sdk_arguments(body)) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == text_of(direct["content"]) and len(pieces) > 3
    assert_same_answer(final, direct)


def test_count_tokens_equals_vllms_own_count(route, vllm, chat_model):
    client, _ = route
    body = {"model": chat_model, "system": SYSTEM, "messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL]}
    direct = vllm.answer("/v1/messages/count_tokens", body)
    assert client.messages.count_tokens(**body).input_tokens == direct["input_tokens"]


def test_a_tool_call_and_its_result_reach_the_template_as_vllm_renders_them(route, vllm, chat_model):
    client, _ = route
    body = message_body(chat_model, messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert_same_answer(client.messages.create(**sdk_arguments(body)), vllm.answer("/v1/messages", body))


def test_thinking_is_vllms_own_budget_natively_and_the_templates_switch_when_translated(route, vllm, chat_model):
    """vLLM's Messages API turns `budget_tokens` into a thinking-token budget, which a server without a
    reasoning parser (this tier's) refuses; the translation switches the chat template's thinking on,
    which SmolLM2's template has no use for: the answer is the one without thinking."""
    client, native = route
    body = message_body(chat_model, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024})
    if native:
        status, direct = vllm.error("/v1/messages", body)
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(**sdk_arguments(body))
        assert status == refused.value.status_code == 400 and "reasoning" in direct["error"]["message"]
        assert refused.value.body["error"]["message"] == direct["error"]["message"]
    else:
        unthinking = {key: value for key, value in body.items() if key != "thinking"}
        assert_same_answer(client.messages.create(**sdk_arguments(body)), vllm.answer("/v1/messages", unthinking))


def test_an_image_is_refused_by_a_text_only_model_exactly_as_vllm_refuses_it(route, vllm, chat_model):
    client, _ = route
    body = message_body(chat_model, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is in this picture?"}]}])
    status, direct = vllm.error("/v1/messages", body)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(**sdk_arguments(body))
    assert status == refused.value.status_code == 400
    assert refused.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                           "message": direct["error"]["message"]}}
    assert "multimodal" in direct["error"]["message"]
