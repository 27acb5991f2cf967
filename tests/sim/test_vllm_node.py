"""The simulated vLLM node, driven by the official `openai` client and, where framing matters, raw HTTP."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time

import httpx
import jsonschema
import openai
import pytest

from sim import generation
from sim.generation import Turn

QUESTION = [{"role": "user", "content": "why is the sky blue?"}]
QUESTION_TOKENS = generation.count_chat_prompt_tokens([Turn("user", "why is the sky blue?")])
REPLY = generation.reply_text("llama3.2", "why is the sky blue?")
WEATHER_TOOL = {  # from the OpenAI API reference's function calling example
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture
def url(start_node) -> str:
    return start_node("vllm", models=("llama3.2",), vision_models=("qwen2-vl",), embedding_models=("e5",))


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def sse_events(response: httpx.Response) -> list[str]:
    assert response.text.endswith("\n\n")
    events = response.text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


def test_chat_answers_the_reply_with_openai_shaped_usage(client):
    answer = client.chat.completions.create(model="llama3.2", messages=QUESTION)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    (choice,) = answer.choices
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == REPLY
    completion_tokens = generation.complete("llama3.2", "why is the sky blue?").completion_tokens
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        QUESTION_TOKENS,
        completion_tokens,
        QUESTION_TOKENS + completion_tokens,
    )


def test_chat_stream_starts_with_the_role_and_concatenates_to_the_unstreamed_answer(client):
    chunks = list(client.chat.completions.create(model="llama3.2", messages=QUESTION, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "stop"]
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_final_chunk_with_empty_choices_and_the_same_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="llama3.2", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    *content, usage_chunk = chunks
    assert usage_chunk.choices == [] and content[-1].choices[0].finish_reason == "stop"
    whole = client.chat.completions.create(model="llama3.2", messages=QUESTION)
    assert usage_chunk.usage.model_dump() == whole.usage.model_dump()


def test_sse_framing_is_data_lines_ending_in_done(url, http):
    response = http.post(
        f"{url}/v1/chat/completions",
        json={"model": "llama3.2", "messages": QUESTION, "stream": True, "max_tokens": 2},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        *({"content": p} for p in generation.reply_pieces("llama3.2", "why is the sky blue?")[:2]),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)


def test_continuous_usage_stats_put_running_usage_on_every_chunk(url, http):
    response = http.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "llama3.2",
            "messages": QUESTION,
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": False, "continuous_usage_stats": True},
        },
    )
    chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3]


def test_completions_answer_text_completion_objects_streamed_or_not(client):
    whole = client.completions.create(model="llama3.2", prompt="Say this is a test", max_tokens=7)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.choices[0].text == generation.reply_text("llama3.2", "Say this is a test", max_tokens=7)
    assert (whole.choices[0].finish_reason, whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        "length",
        5,
        7,
    )
    chunks = list(
        client.completions.create(
            model="llama3.2",
            prompt="Say this is a test",
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 7 and all(c.object == "text_completion" for c in chunks)


def test_completions_default_to_sixteen_tokens_like_vllm(client):
    answer = client.completions.create(model="llama3.2", prompt="Once upon a time")
    assert answer.usage.completion_tokens == min(
        16, len(generation.reply_pieces("llama3.2", "Once upon a time"))
    )


def test_token_id_prompts_count_one_token_per_id(client):
    assert client.completions.create(model="llama3.2", prompt=[1, 2, 3, 4]).usage.prompt_tokens == 4


def test_ignore_eos_generates_exactly_max_tokens(client):
    answer = client.completions.create(
        model="llama3.2", prompt="go", max_tokens=120, extra_body={"ignore_eos": True}
    )
    assert answer.usage.completion_tokens == 120 and answer.choices[0].finish_reason == "length"


def test_embeddings_default_to_base64_that_decodes_to_the_exact_vectors(client, url, http):
    texts = ["first text", "second text", "third"]
    answer = client.embeddings.create(model="e5", input=texts)
    assert [d.embedding for d in answer.data] == [generation.embedding_for("e5", t) for t in texts]
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (5, 5)
    raw = http.post(
        f"{url}/v1/embeddings", json={"model": "e5", "input": "first text", "encoding_format": "base64"}
    )
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == generation.embedding_for(
        "e5", "first text"
    )


def test_float_embeddings_come_as_lists_in_order(client):
    answer = client.embeddings.create(model="e5", input=["b", "a"], encoding_format="float")
    assert answer.object == "list" and answer.data[0].object == "embedding"
    assert answer.data[1].embedding == generation.embedding_for("e5", "a")


def test_models_list_every_served_model_with_max_model_len(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["llama3.2", "qwen2-vl", "e5"]
    card = models[0].model_dump()
    assert (card["object"], card["owned_by"], card["root"], card["max_model_len"]) == (
        "model",
        "vllm",
        "llama3.2",
        generation.CONTEXT_LENGTH,
    )


def test_json_schema_response_format_answers_a_valid_instance(client):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        },
        "required": ["city", "population", "tags"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="llama3.2",
        messages=QUESTION,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    json_object = client.chat.completions.create(
        model="llama3.2", messages=QUESTION, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(json_object.choices[0].message.content), dict)


def test_tools_are_called_with_schema_valid_arguments_and_finish_reason_tool_calls(client):
    asked = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    answer = client.chat.completions.create(model="llama3.2", messages=asked, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("chatcmpl-tool-") and call.type == "function"
    assert call.function.name == "get_current_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    expected = generation.complete("llama3.2", asked[0]["content"], tool=WEATHER_TOOL["function"])
    assert answer.usage.completion_tokens == expected.completion_tokens


def test_streamed_tool_call_opens_with_id_and_name_then_streams_argument_pieces(client):
    asked = [{"role": "user", "content": "Weather in Boston?"}]
    chunks = list(
        client.chat.completions.create(model="llama3.2", messages=asked, tools=[WEATHER_TOOL], stream=True)
    )
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].type == "function" and calls[0].function.name == "get_current_weather"
    assert all(c.index == 0 for c in calls) and all(c.id is None for c in calls[1:])
    arguments = "".join(c.function.arguments or "" for c in calls)
    expected = generation.complete("llama3.2", "Weather in Boston?", tool=WEATHER_TOOL["function"])
    assert json.loads(arguments) == expected.tool_call.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_text_and_a_named_tool_finishes_with_stop(client):
    plain = client.chat.completions.create(
        model="llama3.2", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert plain.choices[0].message.content == REPLY and not plain.choices[0].message.tool_calls
    named = client.chat.completions.create(
        model="llama3.2",
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_current_weather"}},
    )
    assert named.choices[0].finish_reason == "stop" and named.choices[0].message.tool_calls


def test_after_a_tool_result_the_model_answers_text(client):
    messages = [
        {"role": "user", "content": "Weather in Boston?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": '{"location": "Boston, MA"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "72 and sunny"},
    ]
    answer = client.chat.completions.create(model="llama3.2", messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == generation.reply_text("llama3.2", "72 and sunny")
    assert answer.choices[0].finish_reason == "stop"


def test_enable_thinking_returns_reasoning_content_streamed_as_deltas(url, client, http):
    body = {"model": "llama3.2", "messages": QUESTION, "chat_template_kwargs": {"enable_thinking": True}}
    whole = http.post(f"{url}/v1/chat/completions", json=body).json()
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] == generation.thinking_text("llama3.2", "why is the sky blue?")
    assert message["content"] == REPLY
    chunks = [
        json.loads(e)
        for e in sse_events(http.post(f"{url}/v1/chat/completions", json=body | {"stream": True}))[:-1]
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == REPLY
    plain = client.chat.completions.create(model="llama3.2", messages=QUESTION)
    assert plain.choices[0].message.model_dump()["reasoning_content"] is None


def test_max_completion_tokens_and_stop_are_honoured(client):
    capped = client.chat.completions.create(model="llama3.2", messages=QUESTION, max_completion_tokens=4)
    assert capped.choices[0].message.content == generation.reply_text("llama3.2", "why is the sky blue?", 4)
    assert (capped.choices[0].finish_reason, capped.usage.completion_tokens) == ("length", 4)
    pieces = generation.reply_pieces("llama3.2", "why is the sky blue?")
    stopped = client.chat.completions.create(model="llama3.2", messages=QUESTION, stop=pieces[3])
    assert stopped.choices[0].message.content == "".join(pieces[:3])
    assert stopped.choices[0].finish_reason == "stop"


def test_unknown_model_is_vllms_404_error_body(url, client, http):
    response = http.post(f"{url}/v1/chat/completions", json={"model": "llama9", "messages": QUESTION})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `llama9` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="llama9", prompt="x")


def test_images_are_accepted_by_vision_models_only(client):
    seen = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            ],
        }
    ]
    answer = client.chat.completions.create(model="qwen2-vl", messages=seen)
    assert answer.usage.prompt_tokens == generation.count_chat_prompt_tokens(
        [Turn("user", "What is in this image?", 1)]
    )
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="llama3.2", messages=seen)
    assert raised.value.body["type"] == "BadRequestError" and raised.value.body["code"] == 400


def test_requests_vllm_would_refuse_get_400_bad_request_errors(url, client, http):
    too_long = client.chat.completions.with_raw_response
    with pytest.raises(openai.BadRequestError) as raised:
        too_long.create(model="llama3.2", messages=QUESTION, max_tokens=generation.CONTEXT_LENGTH)
    assert raised.value.body["param"] == "max_tokens"
    options_without_stream = http.post(
        f"{url}/v1/chat/completions",
        json={"model": "llama3.2", "messages": QUESTION, "stream_options": {"include_usage": True}},
    )
    assert options_without_stream.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="e5", messages=QUESTION)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="llama3.2", input="x")


def test_a_body_without_model_uses_the_first_served_model(url, http):
    answer = http.post(f"{url}/v1/chat/completions", json={"messages": QUESTION}).json()
    assert answer["model"] == "llama3.2" and answer["choices"][0]["message"]["content"] == REPLY


def test_health_version_and_metrics_names(url, http):
    health = http.get(f"{url}/health")
    assert (health.status_code, health.content) == (200, b"")
    assert http.get(f"{url}/version").json()["version"]
    metrics = http.get(f"{url}/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert f'{name}{{engine="0",model_name="llama3.2"}}' in metrics


def metrics(http: httpx.Client, url: str, model: str = "llama3.2") -> dict[str, float]:
    """One scrape of /metrics: the samples labelled with `model`, by metric name."""
    samples = {}
    for line in http.get(f"{url}/metrics").text.splitlines():
        if not line.startswith("#") and f'model_name="{model}"' in line and "finished_reason" not in line:
            samples[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return samples


def test_requests_beyond_the_slots_wait_in_a_queue_visible_in_metrics(start_node, http):
    url = start_node("vllm", slots=1, tokens_per_s=20)
    body = {"model": "llama3.2", "messages": QUESTION, "max_tokens": 10}
    callers = [
        threading.Thread(target=http.post, args=(f"{url}/v1/chat/completions",), kwargs={"json": body})
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 2
    while (busy := metrics(http, url))["vllm:num_requests_waiting"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (busy["vllm:num_requests_running"], busy["vllm:num_requests_waiting"]) == (1, 2)
    assert busy["vllm:kv_cache_usage_perc"] > 0
    for caller in callers:
        caller.join()
    done = metrics(http, url)
    assert (done["vllm:num_requests_running"], done["vllm:num_requests_waiting"]) == (0, 0)
    assert done["vllm:generation_tokens_total"] == 30
    assert done["vllm:prompt_tokens_total"] == 3 * QUESTION_TOKENS


def test_a_client_that_leaves_the_queue_is_never_served(start_node, http):
    url = start_node("vllm", slots=1, tokens_per_s=40)
    body = {"model": "llama3.2", "messages": QUESTION, "max_tokens": 15}
    running = threading.Thread(target=http.post, args=(f"{url}/v1/chat/completions",), kwargs={"json": body})
    running.start()
    time.sleep(0.05)
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{url}/v1/chat/completions", json=body, timeout=0.1)
    time.sleep(0.05)
    assert metrics(http, url)["vllm:num_requests_waiting"] == 0
    running.join()
    assert metrics(http, url)["vllm:generation_tokens_total"] == 15


def test_tokens_are_paced_at_tokens_per_s_after_ttft(start_node, http):
    url = start_node("vllm", tokens_per_s=100, ttft_ms=100)
    started = time.monotonic()
    with http.stream(
        "POST",
        f"{url}/v1/completions",
        json={"model": "llama3.2", "prompt": "hi", "max_tokens": 11, "stream": True},
    ) as response:
        arrivals = [
            time.monotonic() - started for line in response.iter_lines() if line.startswith("data: {")
        ]
    assert len(arrivals) == 11
    assert 0.09 <= arrivals[0] < 1.0  # the 100 ms time to first token (upper bound loose for busy machines)
    assert 0.09 <= arrivals[-1] - arrivals[0] < 1.5  # ten more tokens at 10 ms each


def assert_same_shape(example, actual, where="body"):
    """Every key of the documented example is present, holding the same JSON type (null matches anything)."""
    if isinstance(example, dict):
        assert isinstance(actual, dict), where
        for key, value in example.items():
            assert key in actual, f"{where}.{key} missing"
            assert_same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(example, list) and example:
        assert isinstance(actual, list) and actual, where
        assert_same_shape(example[0], actual[0], f"{where}[0]")
    elif example is not None and actual is not None:
        assert isinstance(actual, type(example)) or {type(example), type(actual)} <= {int, float}, where


def test_answers_have_the_shape_of_the_openai_reference_examples(url, http):
    # The chat completion and embedding response examples of the OpenAI API reference.
    chat_example = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1677652288,
        "model": "gpt-3.5-turbo-0613",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }
    embedding_example = {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222], "index": 0}
        ],
        "model": "text-embedding-ada-002",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    chat = http.post(f"{url}/v1/chat/completions", json={"model": "llama3.2", "messages": QUESTION}).json()
    assert_same_shape(chat_example, chat)
    embedding = http.post(
        f"{url}/v1/embeddings", json={"model": "e5", "input": "The food was delicious"}
    ).json()
    assert_same_shape(embedding_example, embedding)
