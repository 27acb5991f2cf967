"""The simulated Ollama node's own Anthropic Messages API (Ollama 0.14 on), driven by the official `anthropic` client.

Pinned to Ollama's layer over its chat (anthropic/anthropic.go), which the gateway passes Messages through to.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from sim import generation
from sim.generation import Turn
from tests.sim.test_vllm_messages_api import PNG, QUESTION, WEATHER_TOOL


@pytest.fixture
def url(start_node) -> str:
    return start_node("ollama", models=("llama3.2",), vision_models=("llava",))


@pytest.fixture
def client(url) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="ollama", max_retries=0)


def events_of(response: httpx.Response) -> list[tuple[str, dict]]:
    blocks = [block.split("\n", 1) for block in response.text.split("\n\n") if block]
    return [(name.removeprefix("event: "), json.loads(data.removeprefix("data: "))) for name, data in blocks]


def test_a_message_is_the_chat_reply_with_ollamas_counts(client):
    message = client.messages.create(model="llama3.2", max_tokens=200, messages=[{"role": "user", "content": QUESTION}])
    assert message.id.startswith("msg_") and message.model == "llama3.2" and message.stop_reason == "end_turn"
    assert message.content[0].text == generation.reply_text("llama3.2", QUESTION)
    assert message.usage.input_tokens == generation.count_chat_prompt_tokens([Turn("user", QUESTION)])
    assert message.usage.output_tokens == len(generation.split_tokens(message.content[0].text))


def test_the_stream_starts_with_an_estimate_and_ends_with_the_engines_counts(url):
    body = {"model": "llama3.2", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    events = events_of(httpx.post(f"{url}/v1/messages", json=body))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"] and "ping" not in names
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    exact = generation.count_chat_prompt_tokens([Turn("user", QUESTION)])
    assert events[0][1]["message"]["usage"]["input_tokens"] != exact  # a quarter of the characters
    assert events[-2][1]["usage"]["input_tokens"] == exact
    assert all(data["type"] == name for name, data in events)


def test_thinking_then_a_tool_call_each_in_its_block_and_the_result_answered(client):
    with client.messages.stream(model="llama3.2", max_tokens=500, tools=[WEATHER_TOOL],
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content][-1] == "tool_use" and final.stop_reason == "tool_use"
    assert final.content[0].type == "thinking" and final.content[0].thinking
    call = final.content[-1]
    assert call.name == "get_weather" and call.id and set(call.input) == {"city"}
    answer = client.messages.create(model="llama3.2", max_tokens=200, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}])
    assert answer.content[0].text == generation.reply_text("llama3.2", "sunny")


def test_only_base64_images_and_only_for_a_vision_model(client):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert client.messages.create(model="llava", max_tokens=50, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}]).content[0].type == "text"
    with pytest.raises(anthropic.BadRequestError) as by_url:
        client.messages.create(model="llava", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.org/a.png"}}]}])
    assert "Only base64 images are supported" in by_url.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as blind:
        client.messages.create(model="llama3.2", max_tokens=50, messages=[{"role": "user", "content": [image]}])
    assert blind.value.body["error"]["type"] == "invalid_request_error" and blind.value.body["request_id"]


def test_an_unknown_model_is_anthropics_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
