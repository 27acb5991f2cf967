"""Every client dialect to every engine, through the real gateway, with the official clients.

Each cell asserts the exact text the simulated model gives for the prompt (sim.generation), that
the streamed answer equals the whole one, and that the usage the client sees equals what the node
counted for that request (its /_sim/stats before and after).
"""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from sim import generation

ON_OLLAMA = "llama3.2"
ON_VLLM = "Qwen/Qwen2.5-0.5B-Instruct"
EMBED_ON_OLLAMA = "nomic-embed-text"
EMBED_ON_VLLM = "intfloat/e5-small"
VISION_ON_OLLAMA = "qwen2.5vl"
VISION_ON_VLLM = "Qwen/Qwen2-VL-2B-Instruct"
CHAT_MODELS = [ON_OLLAMA, ON_VLLM]
# A 1×1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age"],
}


@pytest.fixture
def openai_client(cluster):
    return openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["staff1"], max_retries=0)


@pytest.fixture
def ollama_client(cluster):
    return ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {cluster.keys['staff1']}"})


class NodeCounter:
    """The tokens a node counted for the requests made inside the `with` block."""

    def __init__(self, cluster, model: str):
        self.url = cluster.vllm_url if model in (ON_VLLM, EMBED_ON_VLLM, VISION_ON_VLLM) else cluster.ollama_url
        self.model = model

    def tokens(self) -> tuple[int, int]:
        counted = httpx.get(f"{self.url}/_sim/stats").json()["tokens"]
        names = [name for name in counted if generation.model_seed(name) == generation.model_seed(self.model)]
        return (sum(counted[n]["prompt"] for n in names), sum(counted[n]["completion"] for n in names))

    def __enter__(self):
        self.before = self.tokens()
        return self

    def __exit__(self, *exc):
        after = self.tokens()
        self.prompt, self.completion = after[0] - self.before[0], after[1] - self.before[1]


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_reaches_either_engine(cluster, openai_client, model, stream):
    prompt = f"Summarise the history of {model} in two lines."
    with NodeCounter(cluster, model) as node:
        answer = openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        if stream:
            chunks = list(answer)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            usage = chunks[-1].usage
            assert all(c.object == "chat.completion.chunk" for c in chunks)
        else:
            text, finish, usage = answer.choices[0].message.content, [answer.choices[0].finish_reason], answer.usage
    assert text == generation.reply_text(model, prompt)
    assert finish == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (node.prompt, node.completion)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_openai_stream_without_include_usage_has_no_usage_chunk(openai_client, model):
    chunks = list(openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions_answer_text_completion_objects(cluster, openai_client, model, stream):
    prompt = "Once upon a time in Moscow, Idaho"
    with NodeCounter(cluster, model) as node:
        answer = openai_client.completions.create(model=model, prompt=prompt, max_tokens=12, stream=stream,
                                                  **({"stream_options": {"include_usage": True}} if stream else {}))
        if stream:
            chunks = list(answer)
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            usage = chunks[-1].usage
            assert all(c.object == "text_completion" for c in chunks)
        else:
            text, usage = answer.choices[0].text, answer.usage
            assert answer.object == "text_completion" and answer.choices[0].finish_reason == "length"
    assert text == generation.reply_text(model, prompt, max_tokens=12)
    assert (usage.prompt_tokens, usage.completion_tokens) == (node.prompt, node.completion)


@pytest.mark.parametrize("model", [EMBED_ON_OLLAMA, EMBED_ON_VLLM])
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_embeddings_keep_batch_order_on_either_engine(cluster, openai_client, model, encoding):
    inputs = [f"document number {i} about {word}" for i, word in enumerate(["wheat", "lentils", "peas", "barley"])]
    with NodeCounter(cluster, model) as node:
        if encoding == "base64":
            result = openai_client.embeddings.create(model=model, input=inputs)  # the SDK's default
        else:
            result = openai_client.embeddings.create(model=model, input=inputs, encoding_format="float")
    assert [item.index for item in result.data] == [0, 1, 2, 3]
    for item, text in zip(result.data, inputs):
        assert item.embedding == pytest.approx(generation.embedding_for(model, text), abs=1e-6)
    assert result.usage.prompt_tokens == node.prompt


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_chat_reaches_either_engine(cluster, ollama_client, model, stream):
    prompt = f"What is special about {model}?"
    with NodeCounter(cluster, model) as node:
        answer = ollama_client.chat(model=model, messages=[{"role": "user", "content": prompt}], stream=stream)
        parts = list(answer) if stream else [answer]
    text = "".join(part.message.content for part in parts)
    final = parts[-1]
    assert text == generation.reply_text(model, prompt)
    assert final.done and final.done_reason == "stop" and not any(p.done for p in parts[:-1])
    assert (final.prompt_eval_count, final.eval_count) == (node.prompt, node.completion)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_generate_answers_response_chunks_from_either_engine(cluster, ollama_client, model, stream):
    prompt = "List three crops grown in the Palouse."
    with NodeCounter(cluster, model) as node:
        answer = ollama_client.generate(model=model, prompt=prompt, stream=stream, options={"num_predict": 9})
        parts = list(answer) if stream else [answer]
    assert "".join(part.response for part in parts) == generation.reply_text(model, prompt, max_tokens=9)
    assert parts[-1].done_reason == "length"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (node.prompt, node.completion)


@pytest.mark.parametrize("model", [EMBED_ON_OLLAMA, EMBED_ON_VLLM])
def test_ollama_embed_and_legacy_embeddings_reach_either_engine(ollama_client, model):
    inputs = ["first text", "second text here", "third"]
    batch = ollama_client.embed(model=model, input=inputs)
    assert len(batch.embeddings) == 3
    for vector, text in zip(batch.embeddings, inputs):
        assert vector == pytest.approx(generation.embedding_for(model, text), abs=1e-6)
    legacy = ollama_client.embeddings(model=model, prompt="second text here")
    assert legacy.embedding == pytest.approx(generation.embedding_for(model, "second text here"), abs=1e-6)


def test_catalogs_describe_models_of_either_engine(ollama_client, openai_client):
    assert ON_VLLM in {m.model for m in ollama_client.list().models}
    assert f"{ON_OLLAMA}:latest" in {m.id for m in openai_client.models.list()}
    assert "completion" in ollama_client.show(ON_VLLM).capabilities
    assert ollama_client.show(ON_OLLAMA).modelfile.startswith("# Modelfile")


def test_openai_image_parts_reach_an_ollama_vision_model(cluster, openai_client):
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    answer = openai_client.chat.completions.create(model=VISION_ON_OLLAMA, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": data_url}}]}])
    assert answer.choices[0].message.content == generation.reply_text(VISION_ON_OLLAMA, "What is in this picture?")
    sent = [r for r in httpx.get(f"{cluster.ollama_url}/_sim/stats").json()["recent"] if r["path"] == "/api/chat"][-1]
    assert sent["body"]["messages"][0]["images"] == [base64.b64encode(PNG).decode()]


def test_ollama_images_reach_a_vllm_vision_model(cluster, ollama_client):
    answer = ollama_client.chat(model=VISION_ON_VLLM, stream=False, messages=[
        {"role": "user", "content": "Describe it.", "images": [base64.b64encode(PNG).decode()]}])
    assert answer.message.content == generation.reply_text(VISION_ON_VLLM, "Describe it.")
    sent = [r for r in httpx.get(f"{cluster.vllm_url}/_sim/stats").json()["recent"]
            if r["path"] == "/v1/chat/completions"][-1]
    parts = sent["body"]["messages"][0]["content"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}} in parts


def test_an_image_for_a_model_without_vision_is_a_clear_400(openai_client, ollama_client):
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=ON_OLLAMA, messages=[{"role": "user", "content": [
            {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": data_url}}]}])
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model=ON_VLLM, stream=False, messages=[
            {"role": "user", "content": "see", "images": [base64.b64encode(PNG).decode()]}])
    assert caught.value.status_code == 400 and isinstance(caught.value.error, str)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_openai_json_schema_output_validates_on_either_engine(openai_client, model):
    answer = openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": "A person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON_SCHEMA)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_format_schema_output_validates_on_either_engine(ollama_client, model, stream):
    answer = ollama_client.chat(model=model, messages=[{"role": "user", "content": "A person."}], format=PERSON_SCHEMA,
                                stream=stream)
    text = "".join(p.message.content for p in answer) if stream else answer.message.content
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_calls_from_either_engine(openai_client, model, stream):
    prompt = "What's the weather in Boise?"
    answer = openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                    tools=[WEATHER_TOOL], stream=stream)
    if stream:
        chunks = list(answer)
        pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert {p.index for p in pieces} == {0}
        call_id = next(p.id for p in pieces if p.id)
        name = next(p.function.name for p in pieces if p.function and p.function.name)
        arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        call = answer.choices[0].message.tool_calls[0]
        call_id, name, arguments, finish = call.id, call.function.name, call.function.arguments, [answer.choices[0].finish_reason]
    assert call_id and name == "get_weather" and finish == ["tool_calls"]
    assert json.loads(arguments) == generation.tool_arguments(model, prompt, WEATHER_TOOL["function"])


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tool_calls_from_either_engine_and_the_result_goes_back(ollama_client, model, stream):
    prompt = "What's the weather in Pullman?"
    answer = ollama_client.chat(model=model, messages=[{"role": "user", "content": prompt}], tools=[WEATHER_TOOL],
                                stream=stream)
    calls = [c for part in answer for c in (part.message.tool_calls or [])] if stream else answer.message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == generation.tool_arguments(model, prompt, WEATHER_TOOL["function"])
    follow_up = ollama_client.chat(model=model, stream=False, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": dict(calls[0].function.arguments)}}]},
        {"role": "tool", "content": "12 degrees and rain", "tool_name": "get_weather"},
    ])
    assert follow_up.message.content == generation.reply_text(model, "12 degrees and rain")


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_thinking_crosses_dialects(ollama_client, model):
    prompt = "Is 17 prime?"
    answer = ollama_client.chat(model=model, messages=[{"role": "user", "content": prompt}], think=True, stream=False)
    assert answer.message.thinking == generation.thinking_text(model, prompt)
    assert answer.message.content == generation.reply_text(model, prompt)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_langchain_chat_models_are_callers_too(cluster, model):
    from langchain_ollama import ChatOllama
    from langchain_openai import ChatOpenAI

    prompt = "Say something about Idaho."
    via_openai = ChatOpenAI(model=model, base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["staff1"],
                            max_retries=0).invoke(prompt)
    via_ollama = ChatOllama(model=model, base_url=cluster.gateway_url,
                            client_kwargs={"headers": {"Authorization": f"Bearer {cluster.keys['staff1']}"}}).invoke(prompt)
    assert via_openai.content == via_ollama.content == generation.reply_text(model, prompt)


def test_bad_bodies_are_refused_in_the_callers_dialect(cluster):
    headers = {"Authorization": f"Bearer {cluster.keys['staff1']}"}
    broken = httpx.post(f"{cluster.gateway_url}/v1/chat/completions", content=b"{oops", headers=headers)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{cluster.gateway_url}/api/chat", json={"messages": []}, headers=headers)
    assert missing.status_code in (400, 422) and isinstance(missing.json()["error"], str)


@pytest.fixture(scope="module")
def image_server():
    """A local HTTP server with a PNG, a text file and an oversized 'image'."""
    import http.server
    import threading

    files = {"/cat.png": ("image/png", PNG), "/notes.txt": ("text/plain", b"hello"),
             "/huge.png": ("image/png", b"\x89PNG" + b"0" * (11 * 2**20))}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            media_type, data = files.get(self.path, ("text/plain", b""))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_image_urls_are_fetched_by_the_gateway_for_ollama(cluster, openai_client, image_server):
    answer = openai_client.chat.completions.create(model=VISION_ON_OLLAMA, messages=image_message(f"{image_server}/cat.png"))
    assert answer.choices[0].message.content == generation.reply_text(VISION_ON_OLLAMA, "What is this?")
    sent = [r for r in httpx.get(f"{cluster.ollama_url}/_sim/stats").json()["recent"] if r["path"] == "/api/chat"][-1]
    assert sent["body"]["messages"][0]["images"] == [base64.b64encode(PNG).decode()]


@pytest.mark.parametrize(("path", "error"), [("/notes.txt", openai.BadRequestError), ("/missing.png", openai.BadRequestError),
                                              ("/huge.png", openai.APIStatusError)])
def test_image_urls_that_are_not_usable_images_are_refused(openai_client, image_server, path, error):
    with pytest.raises(error) as caught:
        openai_client.chat.completions.create(model=VISION_ON_OLLAMA, messages=image_message(f"{image_server}{path}"))
    assert caught.value.status_code in (400, 413) and path in caught.value.body["message"]


def test_a_too_large_body_is_413_in_the_dialect(cluster):
    """Refused from its Content-Length under the shipped limit (tests/integration/test_edge_limits.py has the rest)."""
    headers = {"Authorization": f"Bearer {cluster.keys['staff1']}"}
    huge = {"model": ON_OLLAMA, "prompt": "x" * (33 * 2**20), "stream": False}
    response = httpx.post(f"{cluster.gateway_url}/api/generate", json=huge, headers=headers, timeout=60)
    assert response.status_code == 413 and "larger than the limit of 33554432 bytes" in response.json()["error"]


@pytest.mark.parametrize(("model", "engine_url"), [(ON_VLLM, "vllm_url"), (ON_OLLAMA, "ollama_url")])
def test_engine_errors_reach_each_client_in_its_own_dialect(cluster, openai_client, ollama_client, model, engine_url):
    node = getattr(cluster, engine_url)
    httpx.post(f"{node}/_sim/faults", json={"mode": "error500", "count": 2})
    try:
        with pytest.raises(ollama.ResponseError) as from_ollama:
            ollama_client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=False)
        assert from_ollama.value.status_code == 502 and "simulated failure" in from_ollama.value.error
        with pytest.raises(openai.InternalServerError) as from_openai:
            openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert "simulated failure" in from_openai.value.body["message"]
    finally:
        httpx.post(f"{node}/_sim/reset")
