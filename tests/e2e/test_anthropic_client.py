"""The official anthropic SDK (and LangChain's ChatAnthropic) through the real gateway, to both simulated engines.

Each answer is the simulated model's own (sim.generation), with the node's exact counts, by each of the
routes a Messages request takes: to the engine's own Messages API (`*-native`: both simulated engines
serve one, as vLLM 0.32 and Ollama 0.14 do), or translated to the engine's chat (`*-translated`: a
second gateway with `native_messages_api=false`, as for an engine that does not serve the API).
"""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import pytest

from sim import generation
from sim.stack import GATEWAY, Service, free_port
from tests.e2e import test_translation_matrix as matrix
from tests.e2e.test_translation_matrix import (
    ON_OLLAMA,
    ON_VLLM,
    PNG,
    VISION_ON_OLLAMA,
    VISION_ON_VLLM,
    WEATHER_TOOL,
)
from tests.support.cluster import NO_LIMITS

image_server = matrix.image_server  # the same fixture: a PNG and a text file on a local HTTP server

ANTHROPIC_WEATHER_TOOL = {
    "name": WEATHER_TOOL["function"]["name"],
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
SYSTEM = "You answer in plain words."


ROUTES = [pytest.param((model, native), id=f"{engine}-{'native' if native else 'translated'}")
          for engine, model in (("ollama", ON_OLLAMA), ("vllm", ON_VLLM)) for native in (True, False)]


@pytest.fixture
def client(cluster):
    return anthropic.Anthropic(base_url=cluster.gateway_url, api_key=cluster.keys["staff1"], max_retries=0)


@pytest.fixture(scope="module")
def translating_gateway(cluster, tmp_path_factory) -> str:
    """A second gateway on the same database and nodes that translates every Messages request."""
    port = free_port()
    options = ("image_fetch_allow_internal=true", *NO_LIMITS, "native_messages_api=false")
    gateway = Service("translating-gateway", [*GATEWAY, "-p", str(port), *(arg for option in options for arg in ("--set", option))],
                      cluster.env, tmp_path_factory.mktemp("translating-gateway"))
    url = f"http://127.0.0.1:{port}"
    try:
        gateway.wait_http(f"{url}/healthz", accept=lambda r: r.status_code == 200)
        yield url
    finally:
        gateway.stop()


@pytest.fixture
def route(request, cluster, translating_gateway) -> tuple[str, anthropic.Anthropic, bool]:
    """(model, a client of the gateway that takes this route, whether it goes to the engine's own API)."""
    model, native = request.param
    base_url = cluster.gateway_url if native else translating_gateway
    return model, anthropic.Anthropic(base_url=base_url, api_key=cluster.keys["staff1"], max_retries=0), native


def engine_path(cluster, model: str, text: str) -> str:
    """The path of the node's latest inference request that carried `text`."""
    url = cluster.vllm_url if model in (ON_VLLM, VISION_ON_VLLM) else cluster.ollama_url
    recent = httpx.get(f"{url}/_sim/stats").json()["recent"]
    return [r["path"] for r in recent if text in json.dumps(r["body"])][-1]


def prompt_tokens(*turns: tuple[str, str], tools: int = 0, images: int = 0) -> int:
    counted = [generation.Turn(role, text) for role, text in turns]
    return generation.count_chat_prompt_tokens(counted, tools) + generation.IMAGE_TOKENS * images


def sent_to_node(cluster, model: str, path: str) -> dict:
    url = cluster.vllm_url if model in (ON_VLLM, VISION_ON_VLLM) else cluster.ollama_url
    return [r for r in httpx.get(f"{url}/_sim/stats").json()["recent"] if r["path"] == path][-1]["body"]


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_create_answers_the_models_text_with_exact_usage(cluster, route):
    model, client, native = route
    prompt = "Name three rivers in Idaho."
    message = client.messages.create(model=model, max_tokens=512, system=SYSTEM,
                                     messages=[{"role": "user", "content": prompt}])
    reply = generation.reply_text(model, prompt)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == reply
    assert message.role == "assistant" and message.model == model
    assert message.id.startswith("chatcmpl-" if native and model == ON_VLLM else "msg_")  # vLLM's own id natively
    expected_path = "/v1/messages" if native else "/v1/chat/completions" if model == ON_VLLM else "/api/chat"
    assert engine_path(cluster, model, prompt) == expected_path
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == prompt_tokens(("system", SYSTEM), ("user", prompt))
    assert message.usage.output_tokens == len(generation.split_tokens(reply))


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_max_tokens_and_stop_sequences_reach_the_engine(route):
    model, client, _ = route
    prompt = "Tell me about the Snake River."
    cut = client.messages.create(model=model, max_tokens=3, messages=[{"role": "user", "content": prompt}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    assert cut.content[0].text == generation.reply_text(model, prompt, max_tokens=3)
    stop_word = generation.split_tokens(generation.reply_text(model, prompt))[2].strip()
    stopped = client.messages.create(model=model, max_tokens=512, stop_sequences=[stop_word],
                                     messages=[{"role": "user", "content": prompt}])
    assert stop_word not in stopped.content[0].text
    assert generation.reply_text(model, prompt).startswith(stopped.content[0].text)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_stream_gives_the_same_message_piece_by_piece(route):
    model, client, _ = route
    prompt = "Describe the Palouse in one paragraph."
    with client.messages.stream(model=model, max_tokens=512, messages=[{"role": "user", "content": prompt}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == generation.reply_text(model, prompt) and len(pieces) > 3
    assert final.content[0].text == generation.reply_text(model, prompt)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == prompt_tokens(("user", prompt))
    assert final.usage.output_tokens == len(pieces)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_stream_events_come_in_anthropics_order(cluster, route):
    """Read raw, as a non-SDK caller would, with the key as a bearer token this time."""
    model, client, native = route
    response = httpx.post(f"{client.base_url}/v1/messages", headers={
        "Authorization": f"Bearer {cluster.keys['staff1']}", "anthropic-version": "2023-06-01"}, json={
        "model": model, "max_tokens": 2048, "stream": True, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Is 17 prime?"}]}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    payloads = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in events]
    assert [payload["type"] for payload in payloads] == names
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names[:2] == ["message_start", "content_block_start" if native else "ping"]  # engines send no ping
    if not native:
        del names[1], payloads[1]  # the ping
    blocks = names[1:-2]
    # thinking, then text: each block opens, streams deltas, closes.
    starts = [i for i, name in enumerate(blocks) if name == "content_block_start"]
    stops = [i for i, name in enumerate(blocks) if name == "content_block_stop"]
    assert len(starts) == len(stops) == 2 and starts[0] == 0 and stops[-1] == len(blocks) - 1
    assert all(name == "content_block_delta" for i, name in enumerate(blocks) if i not in starts + stops)
    kinds = [payloads[1 + i]["content_block"]["type"] for i in starts]
    assert kinds == ["thinking", "text"]
    delta = payloads[-2]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["input_tokens"] > 0


@pytest.mark.parametrize("route", ROUTES, indirect=True)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_call_then_a_tool_result_turn_gets_the_answer(route, stream):
    model, client, _ = route
    prompt = "What's the weather in Boise?"
    asked = {"model": model, "max_tokens": 512, "tools": [ANTHROPIC_WEATHER_TOOL],
             "messages": [{"role": "user", "content": prompt}]}
    if stream:
        with client.messages.stream(**asked) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**asked)
    calls = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].id
    assert calls[0].input == generation.tool_arguments(model, prompt, WEATHER_TOOL["function"])
    assert message.usage.input_tokens == prompt_tokens(("user", prompt), tools=1)
    follow_up = client.messages.create(model=model, max_tokens=512, tools=[ANTHROPIC_WEATHER_TOOL], messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": "12 degrees and rain"}]},
    ])
    assert follow_up.stop_reason == "end_turn"
    assert follow_up.content[0].text == generation.reply_text(model, "12 degrees and rain")


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_thinking_blocks_come_signed_and_go_back(route):
    """Signed, except by Ollama's own Messages API, which signs nothing (and takes its blocks back unsigned)."""
    model, client, native = route
    prompt = "Is 17 prime?"
    message = client.messages.create(model=model, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                     messages=[{"role": "user", "content": prompt}])
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == generation.thinking_text(model, prompt)
    assert bool(message.content[0].signature) != (native and model == ON_OLLAMA)
    assert message.content[1].text == generation.reply_text(model, prompt)
    again = client.messages.create(model=model, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                   messages=[{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": message.content},
                                             {"role": "user", "content": "And 21?"}])
    assert again.content[-1].text == generation.reply_text(model, "And 21?")


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_structured_output_matches_the_schema_by_every_route(cluster, route):
    """Ollama's own Messages API reads no output format: such a request goes to its chat, which does."""
    model, client, native = route
    schema = {"type": "object", "properties": {"river": {"type": "string"}, "miles": {"type": "integer"}},
              "required": ["river", "miles"], "additionalProperties": False}
    prompt = "Which river crosses Boise, and how long is it?"
    message = client.messages.create(model=model, max_tokens=512, messages=[{"role": "user", "content": prompt}],
                                     extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    answer = json.loads(message.content[0].text)
    assert set(answer) == {"river", "miles"} and isinstance(answer["miles"], int)
    native_there = native and model == ON_VLLM
    expected_path = "/v1/messages" if native_there else "/v1/chat/completions" if model == ON_VLLM else "/api/chat"
    assert engine_path(cluster, model, prompt) == expected_path


def test_base64_image_reaches_a_vllm_vision_model(cluster, client):
    data = base64.b64encode(PNG).decode()
    message = client.messages.create(model=VISION_ON_VLLM, max_tokens=256, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is in this picture?"}]}])
    assert message.content[0].text == generation.reply_text(VISION_ON_VLLM, "What is in this picture?")
    assert message.usage.input_tokens == prompt_tokens(("user", "What is in this picture?"), images=1)
    blocks = sent_to_node(cluster, VISION_ON_VLLM, "/v1/messages")["messages"][0]["content"]
    assert {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}} in blocks


def test_url_image_reaches_vllms_own_messages_api_as_the_bytes_the_gateway_fetched(cluster, client, image_server):
    message = client.messages.create(model=VISION_ON_VLLM, max_tokens=256, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": f"{image_server}/cat.png"}},
        {"type": "text", "text": "What is that?"}]}])
    assert message.content[0].text == generation.reply_text(VISION_ON_VLLM, "What is that?")
    blocks = sent_to_node(cluster, VISION_ON_VLLM, "/v1/messages")["messages"][0]["content"]
    assert blocks[0] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": base64.b64encode(PNG).decode()}}


def test_url_image_is_fetched_by_the_gateway_for_ollama(cluster, client, translating_gateway, image_server):
    """Ollama takes no image URL itself (its Messages API neither): it gets the bytes the gateway fetched."""
    body = {"model": VISION_ON_OLLAMA, "max_tokens": 256, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": f"{image_server}/cat.png"}},
        {"type": "text", "text": "What is this?"}]}]}
    message = client.messages.create(**body)
    assert message.content[0].text == generation.reply_text(VISION_ON_OLLAMA, "What is this?")
    image = sent_to_node(cluster, VISION_ON_OLLAMA, "/v1/messages")["messages"][0]["content"][0]
    assert image == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": base64.b64encode(PNG).decode()}}
    translating = anthropic.Anthropic(base_url=translating_gateway, api_key=cluster.keys["staff1"], max_retries=0)
    assert translating.messages.create(**body).content[0].text == message.content[0].text
    sent = sent_to_node(cluster, VISION_ON_OLLAMA, "/api/chat")
    assert sent["messages"][0]["images"] == [base64.b64encode(PNG).decode()]


def test_an_image_url_that_is_not_an_image_is_a_bad_request(client, image_server):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=VISION_ON_OLLAMA, max_tokens=256, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": f"{image_server}/notes.txt"}},
            {"type": "text", "text": "What is this?"}]}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_count_tokens_equals_the_input_tokens_of_the_same_request(route):
    model, client, _ = route
    messages = [{"role": "user", "content": "What's the weather in Boise?"}]
    counted = client.messages.count_tokens(model=model, system=SYSTEM, messages=messages, tools=[ANTHROPIC_WEATHER_TOOL])
    answered = client.messages.create(model=model, max_tokens=512, system=SYSTEM, messages=messages,
                                      tools=[ANTHROPIC_WEATHER_TOOL])
    assert counted.input_tokens == answered.usage.input_tokens
    assert counted.input_tokens == prompt_tokens(("system", SYSTEM), ("user", messages[0]["content"]), tools=1)


def test_a_wrong_key_is_an_authentication_error(cluster):
    client = anthropic.Anthropic(base_url=cluster.gateway_url, api_key="mr_abcdefgh_" + "x" * 40, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=ON_VLLM, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "invalid API key"}}


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-nonexistent", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in caught.value.body["error"]["message"]


def test_a_bad_body_is_a_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=ON_VLLM, max_tokens=16, messages=[{"role": "robot", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].role" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(("body", "headers", "mentions"), [
    ({"model": ON_VLLM, "messages": [{"role": "user", "content": "hi"}]}, {}, "max_tokens"),
    ({"model": ON_VLLM, "max_tokens": 8, "messages": []}, {}, "messages"),
    ({"model": ON_VLLM, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
     {"anthropic-version": "1999-01-01"}, "anthropic-version"),
])
def test_requests_anthropic_would_refuse_are_400_invalid_request_errors(cluster, body, headers, mentions):
    response = httpx.post(f"{cluster.gateway_url}/v1/messages", json=body,
                          headers={"x-api-key": cluster.keys["staff1"], **headers})
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert mentions in error["error"]["message"]


def test_a_missing_key_and_a_wrong_method_answer_in_anthropics_shape(cluster):
    missing = httpx.post(f"{cluster.gateway_url}/v1/messages", json={})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong_method = httpx.get(f"{cluster.gateway_url}/v1/messages", headers={"x-api-key": cluster.keys["staff1"]})
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    unknown = httpx.post(f"{cluster.gateway_url}/v1/messages/batches", headers={"x-api-key": cluster.keys["staff1"]})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_a_body_over_the_limit_is_request_too_large_in_anthropics_shape(cluster):
    huge = {"model": ON_VLLM, "max_tokens": 8, "messages": [{"role": "user", "content": "x" * (33 * 2**20)}]}
    response = httpx.post(f"{cluster.gateway_url}/v1/messages", json=huge,
                          headers={"x-api-key": cluster.keys["staff1"]}, timeout=60)
    assert response.status_code == 413
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("model", [ON_OLLAMA, ON_VLLM])
def test_langchain_chat_anthropic_gets_a_reply(cluster, model):
    from langchain_anthropic import ChatAnthropic

    prompt = "Say something about Idaho."
    chat = ChatAnthropic(model=model, base_url=cluster.gateway_url, api_key=cluster.keys["staff1"], max_retries=0,
                         max_tokens=512)
    assert chat.invoke(prompt).content == generation.reply_text(model, prompt)
