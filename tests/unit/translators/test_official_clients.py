"""The official clients (openai, ollama) read what the translators write, exactly as users call them.

An in-process stand-in for the gateway (httpx.MockTransport) runs the facade on each request and
answers with canned engine output for whichever engine path the request was translated to.
"""

import json

import httpx
import ollama
import openai
import pytest

from translators.pipeline import (
    build_backend_request,
    parse_client_request,
    response_translator,
    translate_backend_error,
)


def sse(*chunks: dict) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    )


def ndjson(*chunks: dict) -> bytes:
    return b"".join(json.dumps(chunk).encode() + b"\n" for chunk in chunks)


def chat_chunk(delta: dict | None, finish_reason=None, usage=None) -> dict:
    chunk = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    if usage:
        chunk["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return chunk


class Gateway:
    """Parses, translates, and answers from `answers[engine_path] = (streamed, whole, status)`."""

    def __init__(self, engine: str, answers: dict):
        self.engine = engine
        self.answers = answers
        self.requests = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        req = parse_client_request(request.url.path, request.content)
        self.requests.append((request, req))
        path, _ = build_backend_request(req, self.engine, "req-1")
        translator = response_translator(req, self.engine, "req-1", 1700000000)
        streamed, whole, status = self.answers[path]
        if status >= 400:
            status, content = translate_backend_error(self.engine, status, whole, req.client_dialect)
        elif req.stream and req.kind != "embedding":
            content = b"".join(translator.feed(streamed) + translator.finish())
        else:
            status, content = translator.translate_body(status, whole)
        return httpx.Response(status, headers={"content-type": translator.media_type}, content=content)

    def openai_client(self) -> openai.OpenAI:
        http_client = httpx.Client(transport=httpx.MockTransport(self.handle))
        return openai.OpenAI(
            base_url="http://gateway/v1", api_key="mr_test", http_client=http_client, max_retries=0
        )

    def ollama_client(self) -> ollama.Client:
        return ollama.Client(host="http://gateway", transport=httpx.MockTransport(self.handle))


OLLAMA_TOOL_STREAM = ndjson(
    {
        "model": "m",
        "created_at": "x",
        "message": {"role": "assistant", "content": "", "thinking": "They want weather."},
        "done": False,
    },
    {
        "model": "m",
        "created_at": "x",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}}
            ],
        },
        "done": False,
    },
    {
        "model": "m",
        "created_at": "x",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 122,
        "eval_count": 33,
    },
)


def test_openai_sdk_streams_a_tool_call_and_usage_from_an_ollama_engine():
    gateway = Gateway("ollama", {"/api/chat": (OLLAMA_TOOL_STREAM, b"", 200)})
    stream = gateway.openai_client().chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_current_weather", "parameters": {"type": "object"}},
            }
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert [(call.index, call.function.name) for call in calls] == [(0, "get_current_weather")]
    assert json.loads(calls[0].function.arguments) == {"location": "Paris, FR"}
    assert calls[0].id.startswith("call_")
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (122, 33)
    request, req = gateway.requests[0]
    assert request.headers["accept"] == "application/json" and req.stream is True


def test_openai_sdk_decodes_base64_embeddings_the_gateway_encoded():
    vectors = [[0.25, -1.5, 3.0], [0.125, 0.0, -0.5]]
    answer = json.dumps({"model": "m", "embeddings": vectors, "prompt_eval_count": 4}).encode()
    gateway = Gateway("ollama", {"/api/embed": (b"", answer, 200)})
    result = gateway.openai_client().embeddings.create(model="all-minilm", input=["a", "b"])
    assert json.loads(gateway.requests[0][0].content)["encoding_format"] == "base64"
    assert [item.embedding for item in result.data] == vectors
    assert result.usage.prompt_tokens == 4


def test_openai_sdk_raises_on_the_gateways_mid_stream_error_event():
    broken = ndjson(
        {"model": "m", "created_at": "x", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {"error": "model runner has unexpectedly stopped"},
    )
    gateway = Gateway("ollama", {"/api/chat": (broken, b"", 200)})
    stream = gateway.openai_client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="model runner has unexpectedly stopped"):
        list(stream)


def test_openai_sdk_reads_a_completion_from_an_ollama_engine():
    answer = json.dumps(
        {
            "model": "m",
            "created_at": "x",
            "response": " indeed a test",
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 5,
            "eval_count": 7,
        }
    ).encode()
    gateway = Gateway("ollama", {"/api/generate": (b"", answer, 200)})
    completion = gateway.openai_client().completions.create(
        model="m", prompt="Say this is a test", max_tokens=7
    )
    assert (completion.choices[0].text, completion.choices[0].finish_reason) == (" indeed a test", "length")
    assert completion.usage.total_tokens == 12


def test_openai_sdk_sees_an_ollama_not_found_as_a_not_found_error():
    gateway = Gateway("ollama", {"/api/chat": (b"", b'{"error":"model \'llama9\' not found"}', 404)})
    with pytest.raises(openai.NotFoundError, match="model 'llama9' not found"):
        gateway.openai_client().chat.completions.create(
            model="llama9", messages=[{"role": "user", "content": "hi"}]
        )


VLLM_TOOL_STREAM = sse(
    chat_chunk(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": ""},
                }
            ],
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location": '}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chat_chunk({}, "tool_calls"),
    chat_chunk(None, usage=(40, 18)),
)


def test_ollama_client_streams_a_whole_tool_call_assembled_from_vllm_fragments():
    gateway = Gateway("vllm", {"/v1/chat/completions": (VLLM_TOOL_STREAM, b"", 200)})
    parts = list(
        gateway.ollama_client().chat(
            model="llama3.2", messages=[{"role": "user", "content": "weather?"}], stream=True
        )
    )
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [(call.function.name, dict(call.function.arguments)) for call in calls] == [
        ("get_current_weather", {"location": "Paris"})
    ]
    assert (parts[-1].done, parts[-1].prompt_eval_count, parts[-1].eval_count) == (True, 40, 18)


def test_ollama_client_generates_through_a_vllm_chat_endpoint():
    answer = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Blue."}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8},
        }
    ).encode()
    gateway = Gateway("vllm", {"/v1/chat/completions": (b"", answer, 200)})
    result = gateway.ollama_client().generate(model="llama3.2", prompt="Why is the sky blue?", stream=False)
    assert (result.response, result.done_reason, result.prompt_eval_count, result.eval_count) == (
        "Blue.",
        "stop",
        6,
        2,
    )


def test_ollama_client_embeds_through_vllm_with_both_endpoints():
    answer = json.dumps(
        {"data": [{"index": 0, "embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    ).encode()
    gateway = Gateway("vllm", {"/v1/embeddings": (b"", answer, 200)})
    client = gateway.ollama_client()
    assert client.embed(model="all-minilm", input="hi").embeddings == [[0.5, 0.25]]
    assert list(client.embeddings(model="all-minilm", prompt="hi").embedding) == [0.5, 0.25]


def test_ollama_client_raises_on_the_gateways_mid_stream_error_line():
    broken = sse(
        chat_chunk({"content": "Hi"}),
        {"error": {"message": "engine crashed", "type": "InternalServerError", "param": None, "code": 500}},
    )
    gateway = Gateway("vllm", {"/v1/chat/completions": (broken, b"", 200)})
    with pytest.raises(ollama.ResponseError, match="engine crashed"):
        list(
            gateway.ollama_client().chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        )


def test_ollama_client_reads_a_vllm_error_as_a_plain_message():
    not_found = json.dumps(
        {
            "error": {
                "message": "The model `llama9` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        }
    ).encode()
    gateway = Gateway("vllm", {"/v1/chat/completions": (b"", not_found, 404)})
    with pytest.raises(ollama.ResponseError) as caught:
        gateway.ollama_client().chat(model="llama9", messages=[{"role": "user", "content": "hi"}])
    assert (caught.value.error, caught.value.status_code) == ("The model `llama9` does not exist.", 404)
