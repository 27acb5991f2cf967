"""The simulated vLLM node's own Anthropic Messages API, driven by the official `anthropic` client.

The gateway passes Messages requests through to engines that serve the API; these tests pin the
node to vLLM's behaviour (vllm/entrypoints/anthropic/serving.py) so that path is tested against
what a real vLLM answers.
"""

from __future__ import annotations

import base64

import anthropic
import httpx
import pytest

from sim import generation
from sim.generation import Turn

QUESTION = "why is the sky blue?"
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture
def url(start_node) -> str:
    return start_node("vllm", models=("llama3.2",), vision_models=("qwen2-vl",), embedding_models=("e5",))


@pytest.fixture
def client(url) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)


def test_a_message_is_the_chat_reply_with_its_exact_counts(client):
    message = client.messages.create(model="llama3.2", max_tokens=200, messages=[{"role": "user", "content": QUESTION}])
    assert message.type == "message" and message.role == "assistant" and message.model == "llama3.2"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == generation.reply_text("llama3.2", QUESTION)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == generation.count_chat_prompt_tokens([Turn("user", QUESTION)])
    assert message.usage.output_tokens == len(generation.split_tokens(message.content[0].text))


def test_the_stream_is_vllms_event_sequence_without_ping(url):
    body = {"model": "llama3.2", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    response = httpx.post(f"{url}/v1/messages", json=body)
    events = [event.split("\n", 1) for event in response.text.split("\n\n") if event]
    names = [name.removeprefix("event: ") for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"} and "ping" not in names
    assert all(data.startswith("data: {") for _, data in events)


def test_the_sdk_assembles_the_streamed_message_with_usage(client):
    with client.messages.stream(model="llama3.2", max_tokens=200,
                                messages=[{"role": "user", "content": QUESTION}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == generation.reply_text("llama3.2", QUESTION)
    assert final.usage.input_tokens == generation.count_chat_prompt_tokens([Turn("user", QUESTION)])
    assert final.usage.output_tokens == len(generation.split_tokens(text))


def test_a_tool_is_called_and_its_result_answered(client):
    first = client.messages.create(model="llama3.2", max_tokens=200, tools=[WEATHER_TOOL],
                                   messages=[{"role": "user", "content": "weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and call.name == "get_weather" and set(call.input) == {"city"}
    second = client.messages.create(model="llama3.2", max_tokens=200, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


def test_thinking_comes_only_when_the_chat_template_is_told(client):
    plain = client.messages.create(model="llama3.2", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                   messages=[{"role": "user", "content": QUESTION}])
    assert [block.type for block in plain.content] == ["text"]  # a thinking budget; the template is not switched
    with pytest.raises(anthropic.BadRequestError) as too_small:
        client.messages.create(model="llama3.2", max_tokens=300, thinking={"type": "enabled", "budget_tokens": 100},
                               messages=[{"role": "user", "content": QUESTION}])
    assert "budget_tokens" in too_small.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as above_the_cap:
        client.messages.create(model="llama3.2", max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 1024},
                               messages=[{"role": "user", "content": QUESTION}])
    assert "less than max_tokens" in above_the_cap.value.body["error"]["message"]
    thought = client.messages.create(model="llama3.2", max_tokens=300, messages=[{"role": "user", "content": QUESTION}],
                                     extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert [block.type for block in thought.content] == ["thinking", "text"]
    assert thought.content[0].thinking and thought.content[0].signature


def test_count_tokens_counts_what_a_message_would_use(client):
    messages = [{"role": "user", "content": QUESTION}]
    counted = client.messages.count_tokens(model="llama3.2", messages=messages)
    used = client.messages.create(model="llama3.2", max_tokens=5, messages=messages)
    assert counted.input_tokens == used.usage.input_tokens > 0


def test_images_reach_only_a_vision_model(client):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    seen = client.messages.create(model="qwen2-vl", max_tokens=50, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}])
    assert seen.content[0].type == "text"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="llama3.2", max_tokens=50, messages=[{"role": "user", "content": [image]}])
    assert refused.value.body == {"type": "error", "error": {
        "type": "BadRequestError", "message": "The model `llama3.2` does not support image input"}}


def test_errors_are_anthropic_shaped_but_validation_is_vllms_own(url, client):
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["type"] == "error" and "nope" in unknown.value.body["error"]["message"]
    invalid = httpx.post(f"{url}/v1/messages", json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == 400  # max_tokens is required


def test_only_a_generating_server_routes_the_messages_api(start_node):
    pooling = start_node("vllm", models=(), embedding_models=("e5",))
    assert httpx.post(f"{pooling}/v1/messages", json={}).status_code == 404
    paths = httpx.get(f"{pooling}/openapi.json").json()["paths"]
    assert "/v1/messages" not in paths and "/v1/embeddings" in paths
