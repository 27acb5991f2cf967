"""The simulated Ollama node, driven by the official `ollama` client and, where framing matters, raw HTTP."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jsonschema
import ollama
import pytest

from sim import generation
from sim.generation import Turn

QUESTION = [{"role": "user", "content": "why is the sky blue?"}]
# A 1x1 PNG, as raw base64 the way Ollama's `images` carry it.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
WEATHER_TOOL = {  # from Ollama's API reference (docs/api.md, "Chat request (with tools)")
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The location to get the weather for, e.g. San Francisco, CA",
                },
                "format": {
                    "type": "string",
                    "description": "The format to return the weather in",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location", "format"],
        },
    },
}


@pytest.fixture
def url(start_node) -> str:
    return start_node(
        "ollama",
        models=("llama3.2", "qwen2.5:7b"),
        vision_models=("llava",),
        embedding_models=("all-minilm",),
    )


@pytest.fixture
def client(url) -> ollama.Client:
    return ollama.Client(host=url)


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


def test_chat_answers_the_reply_for_the_last_message_with_exact_counts(client):
    answer = client.chat(model="llama3.2", messages=QUESTION)
    expected = generation.complete("llama3.2", "why is the sky blue?")
    assert answer.message.role == "assistant"
    assert answer.message.content == generation.reply_text("llama3.2", "why is the sky blue?")
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count == generation.count_chat_prompt_tokens(
        [Turn("user", "why is the sky blue?")]
    )
    assert answer.eval_count == expected.completion_tokens
    assert answer.model == "llama3.2"


def test_chat_stream_concatenates_to_the_unstreamed_answer_with_the_same_counts(client):
    whole = client.chat(model="llama3.2", messages=QUESTION, stream=False)
    parts = list(client.chat(model="llama3.2", messages=QUESTION, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert len(parts) - 1 == whole.eval_count
    final = parts[-1]
    assert (final.prompt_eval_count, final.eval_count, final.done_reason) == (
        whole.prompt_eval_count,
        whole.eval_count,
        "stop",
    )
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(final, key) > 0


def test_a_body_without_stream_gets_an_ndjson_stream_ending_in_the_statistics_object(url, http):
    # The streaming chat request of Ollama's API reference (docs/api.md, "Chat Request (Streaming)").
    response = http.post(f"{url}/api/chat", json={"model": "llama3.2", "messages": QUESTION})
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response)
    assert {"model", "created_at", "message", "done"} <= set(lines[0]) and lines[0]["done"] is False
    assert lines[0]["message"]["role"] == "assistant"
    assert {
        "model",
        "created_at",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    } <= set(lines[-1])
    assert lines[-1]["created_at"].endswith("Z")


def test_generate_streams_response_pieces_and_returns_context(client):
    parts = list(client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=True))
    assert "".join(p.response for p in parts) == generation.reply_text("llama3.2", "Why is the sky blue?")
    assert parts[-1].prompt_eval_count == generation.count_chat_prompt_tokens(
        [Turn("user", "Why is the sky blue?")]
    )
    assert (
        len(parts[-1].context) == generation.count_text_tokens("Why is the sky blue?") + parts[-1].eval_count
    )


def test_generate_with_system_and_raw_count_their_prompt_as_documented(client):
    with_system = client.generate(model="llama3.2", prompt="hello there", system="be brief")
    assert with_system.prompt_eval_count == generation.count_chat_prompt_tokens(
        [Turn("system", "be brief"), Turn("user", "hello there")]
    )
    raw = client.generate(model="llama3.2", prompt="[INST] hello there [/INST]", raw=True)
    assert raw.prompt_eval_count == 4 and raw.context is None


def test_documented_generate_request_with_every_option_is_accepted(url, http):
    # The "Generate request (With options)" example of Ollama's API reference (docs/api.md).
    body = {
        "model": "llama3.2",
        "prompt": "Why is the sky blue?",
        "stream": False,
        "options": {
            "num_keep": 5,
            "seed": 42,
            "num_predict": 100,
            "top_k": 20,
            "top_p": 0.9,
            "min_p": 0.0,
            "typical_p": 0.7,
            "repeat_last_n": 33,
            "temperature": 0.8,
            "repeat_penalty": 1.2,
            "presence_penalty": 1.5,
            "frequency_penalty": 1.0,
            "mirostat": 1,
            "mirostat_tau": 0.8,
            "mirostat_eta": 0.6,
            "penalize_newline": True,
            "stop": ["\n", "user:"],
            "numa": False,
            "num_ctx": 1024,
            "num_batch": 2,
            "num_gpu": 1,
            "main_gpu": 0,
            "low_vram": False,
            "vocab_only": False,
            "use_mmap": True,
            "use_mlock": False,
            "num_thread": 8,
        },
    }
    answer = http.post(f"{url}/api/generate", json=body).json()
    assert {
        "model",
        "created_at",
        "response",
        "done",
        "context",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    } <= set(answer)
    assert answer["response"] == generation.reply_text("llama3.2", "Why is the sky blue?")


def test_names_with_and_without_latest_reach_the_same_model_and_tags_list_the_full_name(client, url, http):
    plain = client.chat(model="llama3.2", messages=QUESTION).message.content
    assert client.chat(model="llama3.2:latest", messages=QUESTION).message.content == plain
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:latest", "qwen2.5:7b", "llava:latest", "all-minilm:latest"]
    listed = http.get(f"{url}/api/tags").json()["models"][0]
    assert listed["name"] == "llama3.2:latest"
    assert set(listed["details"]) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }


def test_unknown_model_is_a_404_with_ollamas_error_body(client, url, http):
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="llama9", messages=QUESTION)
    assert raised.value.status_code == 404
    response = http.post(f"{url}/api/generate", json={"model": "llama9", "prompt": "hi"})
    assert (response.status_code, response.json()) == (404, {"error": "model 'llama9' not found"})


def test_num_predict_caps_the_answer_with_done_reason_length(client):
    answer = client.chat(model="llama3.2", messages=QUESTION, options={"num_predict": 3})
    assert answer.message.content == generation.reply_text("llama3.2", "why is the sky blue?", max_tokens=3)
    assert (answer.eval_count, answer.done_reason) == (3, "length")


def test_stop_option_cuts_the_answer_before_the_stop_string(client):
    pieces = generation.reply_pieces("llama3.2", "why is the sky blue?")
    answer = client.chat(model="llama3.2", messages=QUESTION, options={"stop": [pieces[2]]})
    assert answer.message.content == "".join(pieces[:2])
    assert answer.eval_count == 3


def test_format_json_returns_a_json_object(client):
    answer = client.generate(model="llama3.2", prompt="colours? Respond using JSON", format="json")
    assert json.loads(answer.response) == json.loads(
        generation.json_text("llama3.2", "colours? Respond using JSON")
    )


def test_format_schema_returns_an_instance_of_the_schema(client):
    # The "Chat request (Structured outputs)" schema of Ollama's API reference (docs/api.md).
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
        "required": ["age", "available"],
    }
    parts = list(client.chat(model="llama3.2", messages=QUESTION, format=schema, stream=True))
    content = "".join(p.message.content for p in parts)
    jsonschema.validate(json.loads(content), schema)
    assert parts[-1].eval_count == len(generation.split_tokens(content))


def test_tools_make_the_model_call_the_first_tool_then_answer_the_tool_result(client):
    asked = [{"role": "user", "content": "What is the weather today in Paris?"}]
    call = client.chat(model="llama3.2", messages=asked, tools=[WEATHER_TOOL])
    assert call.message.content == "" and call.done_reason == "stop"
    (tool_call,) = call.message.tool_calls
    assert tool_call.function.name == "get_current_weather"
    jsonschema.validate(dict(tool_call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    followed = asked + [
        call.message,
        {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"},
    ]
    answer = client.chat(model="llama3.2", messages=followed, tools=[WEATHER_TOOL])
    assert not answer.message.tool_calls
    assert answer.message.content == generation.reply_text("llama3.2", "22 degrees")


def test_streamed_tool_call_arrives_whole_in_one_chunk(client):
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    parts = list(client.chat(model="llama3.2", messages=asked, tools=[WEATHER_TOOL], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_current_weather"
    expected = generation.complete("llama3.2", "Weather in Paris?", tool=WEATHER_TOOL["function"])
    assert dict(calls[0].function.arguments) == expected.tool_call.arguments
    assert parts[-1].eval_count == expected.completion_tokens


def test_think_puts_reasoning_in_message_thinking_before_the_answer(client):
    whole = client.chat(model="llama3.2", messages=QUESTION, think=True)
    assert whole.message.thinking == generation.thinking_text("llama3.2", "why is the sky blue?")
    assert whole.message.content == generation.reply_text("llama3.2", "why is the sky blue?")
    parts = list(client.chat(model="llama3.2", messages=QUESTION, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    first_content = next(i for i, p in enumerate(parts) if p.message.content)
    assert all(not p.message.thinking for p in parts[first_content:])
    assert parts[-1].eval_count == whole.eval_count
    assert client.generate(model="llama3.2", prompt="why?", think=True).thinking == generation.thinking_text(
        "llama3.2", "why?"
    )


def test_images_are_accepted_by_vision_models_only(client, url, http):
    seen = [{"role": "user", "content": "what is in this image?", "images": [PNG]}]
    answer = client.chat(model="llava", messages=seen)
    assert answer.prompt_eval_count == generation.count_chat_prompt_tokens(
        [Turn("user", "what is in this image?", 1)]
    )
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="llama3.2", messages=seen)
    assert raised.value.status_code == 400
    bad = http.post(f"{url}/api/generate", json={"model": "llava", "prompt": "x", "images": ["not base64!"]})
    assert bad.status_code == 400 and "error" in bad.json()


def test_embed_keeps_input_order_and_counts_prompt_tokens(client):
    texts = ["Why is the sky blue?", "Why is the grass green?"]
    answer = client.embed(model="all-minilm", input=texts)
    assert answer.embeddings == [generation.embedding_for("all-minilm", t) for t in texts]
    assert answer.prompt_eval_count == 10 and answer.model == "all-minilm"
    assert client.embed(model="all-minilm", input="one text").embeddings == [
        generation.embedding_for("all-minilm", "one text")
    ]
    assert len(client.embed(model="all-minilm", input="x", dimensions=16).embeddings[0]) == 16


def test_legacy_embeddings_returns_one_vector_for_the_prompt(client):
    answer = client.embeddings(model="all-minilm", prompt="Here is an article about llamas...")
    assert list(answer.embedding) == generation.embedding_for(
        "all-minilm", "Here is an article about llamas..."
    )


def test_embedding_models_refuse_chat(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="all-minilm", messages=QUESTION)
    assert raised.value.status_code == 400 and "does not support chat" in raised.value.error


def test_show_reports_capabilities_details_and_context_length(client):
    chat_model, vision_model, embedder = (
        client.show("llama3.2"),
        client.show("llava"),
        client.show("all-minilm"),
    )
    assert chat_model.capabilities == ["completion", "tools", "thinking"]
    assert "vision" in vision_model.capabilities
    assert embedder.capabilities == ["embedding"]
    family = chat_model.details.family
    assert chat_model.modelinfo[f"{family}.context_length"] == generation.CONTEXT_LENGTH
    assert chat_model.modelfile and chat_model.template and chat_model.parameters
    with pytest.raises(ollama.ResponseError):
        client.show("llama9")


def test_version_is_reported(url, http):
    assert http.get(f"{url}/api/version").json()["version"].count(".") == 2
    assert http.get(url).text == "Ollama is running"


def test_requests_load_models_and_the_least_recently_used_is_evicted_past_max_loaded(client):
    assert client.ps().models == []
    for model in ("llama3.2", "qwen2.5:7b"):
        client.generate(model=model, prompt="hi")
    assert [m.model for m in client.ps().models] == ["qwen2.5:7b", "llama3.2:latest"]
    client.generate(model="llama3.2", prompt="hi")  # now qwen is least recently used
    client.generate(model="llava", prompt="hi")
    loaded = client.ps().models
    assert sorted(m.model for m in loaded) == ["llama3.2:latest", "llava:latest"]
    assert all(m.size_vram == m.size and m.expires_at and m.details.family for m in loaded)


def test_loading_a_model_takes_load_ms_and_is_reported_as_load_duration(start_node):
    client = ollama.Client(host=start_node("ollama", load_ms=150))
    cold = client.generate(model="llama3.2", prompt="hi")
    warm = client.generate(model="llama3.2", prompt="hi")
    assert cold.load_duration >= 150_000_000
    assert warm.load_duration < 50_000_000


def test_keep_alive_zero_unloads_the_model_after_the_request(client):
    client.generate(model="llama3.2", prompt="hi", keep_alive=0)
    assert client.ps().models == []
    client.generate(model="llama3.2", prompt="hi", keep_alive="300ms")
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    time.sleep(0.35)
    assert client.ps().models == []


def test_empty_prompt_loads_and_keep_alive_zero_unloads_as_documented(url, client, http):
    # "Load a model" / "Unload a model" of Ollama's API reference (docs/api.md).
    loaded = http.post(f"{url}/api/generate", json={"model": "llama3.2"}).json()
    assert (loaded["done"], loaded["done_reason"], loaded["response"]) == (True, "load", "")
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    unloaded = http.post(
        f"{url}/api/chat", json={"model": "llama3.2", "messages": [], "keep_alive": 0}
    ).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"] == {"role": "assistant", "content": ""}
    assert client.ps().models == []


def test_bad_bodies_get_ollama_style_400s(url, http):
    assert http.post(f"{url}/api/chat", content=b"{not json").status_code == 400
    missing = http.post(f"{url}/api/chat", json={"messages": QUESTION})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    bad_keep_alive = http.post(
        f"{url}/api/generate", json={"model": "llama3.2", "prompt": "x", "keep_alive": "soon"}
    )
    assert bad_keep_alive.status_code == 400
    bad_format = http.post(f"{url}/api/generate", json={"model": "llama3.2", "prompt": "x", "format": "yaml"})
    assert bad_format.status_code == 400
