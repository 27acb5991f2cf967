"""Client requests: validation, sampling and limits, same-dialect pass-through, crossings, round trips."""

import base64
import json

import pytest

from translators.errors import GatewayError
from translators.mapping import WITHHELD_OLLAMA_OPTIONS
from translators.pipeline import build_backend_request, parse_client_request


def parse(path: str, body: dict):
    return parse_client_request(path, json.dumps(body).encode())


def backend(req, engine: str) -> tuple[str, dict]:
    path, body = build_backend_request(req, engine, "req-1")
    return path, json.loads(body)


def gateway_error(path: str, body: bytes, **kwargs) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_client_request(path, body, **kwargs)
    return caught.value


CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}]}


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2]", b'"text"'])
def test_malformed_bodies_are_400(body):
    error = gateway_error("/v1/chat/completions", body)
    assert error.status == 400
    assert error.code == "invalid_json"


def test_a_body_over_the_limit_is_413_and_says_the_limit():
    error = gateway_error("/api/chat", json.dumps(CHAT).encode(), max_body_bytes=10)
    assert error.status == 413
    assert "10 bytes" in error.message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_missing_model_is_422_naming_the_field(path):
    error = gateway_error(path, json.dumps({"messages": CHAT["messages"]}).encode())
    assert (error.status, error.message) == (422, "'model' is required")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_missing_messages_is_422(path):
    error = gateway_error(path, json.dumps({"model": "m"}).encode())
    assert (error.status, error.message) == (422, "'messages' is required")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/embeddings", {"model": "m"}, "input"),
        ("/api/embed", {"model": "m"}, "input"),
        ("/api/embeddings", {"model": "m"}, "prompt"),
    ],
)
def test_missing_input_of_each_endpoint_is_422(path, body, field):
    error = gateway_error(path, json.dumps(body).encode())
    assert (error.status, error.message) == (422, f"'{field}' is required")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {**CHAT, "messages": "hello"}, "messages"),
        ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens"),
        ("/api/chat", {**CHAT, "options": {"num_predict": "10"}}, "options.num_predict"),
        ("/api/chat", {**CHAT, "model": 7}, "model"),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": ["parts"]}]}, "messages[0].content"),
    ],
)
def test_wrong_types_are_400_naming_the_field(path, body, field):
    error = gateway_error(path, json.dumps(body).encode())
    assert error.status == 400
    assert error.message.startswith(f"'{field}' must be")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "messages": []}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}),
        (
            "/v1/chat/completions",
            {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
        ),
        ("/api/chat", {**CHAT, "format": "yaml"}),
        ("/api/chat", {**CHAT, "think": "maximum"}),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]}),
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}
                ],
            },
        ),
    ],
)
def test_invalid_values_are_422(path, body):
    assert gateway_error(path, json.dumps(body).encode()).status == 422


def test_an_unknown_path_is_404_listing_the_known_ones():
    error = gateway_error("/v1/moderations", b"{}")
    assert error.status == 404
    assert "/v1/chat/completions" in error.message


def test_query_string_and_trailing_slash_do_not_change_the_endpoint():
    assert parse("/api/chat/?x=1", CHAT).client_endpoint == "/api/chat"


def test_streaming_is_decided_by_the_body_with_each_dialects_default():
    assert parse("/v1/chat/completions", CHAT).stream is False
    assert parse("/api/chat", CHAT).stream is True
    assert parse("/api/chat", {**CHAT, "stream": False}).stream is False
    assert parse("/v1/embeddings", {"model": "m", "input": "x", "stream": True}).stream is False


def test_kind_dialect_and_model_are_exposed_for_the_gateway():
    req = parse("/api/generate", {"model": "llama3.2", "prompt": "hi"})
    assert (req.client_dialect, req.kind, req.model, req.client_endpoint) == (
        "ollama",
        "completion",
        "llama3.2",
        "/api/generate",
    )


def test_cost_estimation_sees_max_tokens_and_grows_with_the_prompt():
    short = parse("/v1/chat/completions", {**CHAT, "max_completion_tokens": 50})
    long = parse("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]})
    assert short.max_tokens == 50
    assert long.max_tokens is None
    assert long.estimated_prompt_tokens > short.estimated_prompt_tokens + 400
    assert parse("/api/chat", {**CHAT, "options": {"num_predict": 77}}).max_tokens == 77


# -- sampling and limits -----------------------------------------------------------------------


def test_openai_sampling_reaches_ollama_options():
    req = parse(
        "/v1/chat/completions",
        {
            **CHAT,
            "max_tokens": 999,
            "max_completion_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "min_p": 0.05,
            "seed": 7,
            "stop": "END",
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "repetition_penalty": 1.1,
        },
    )
    _, body = backend(req, "ollama")
    assert body["options"] == {
        "num_predict": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["END"],
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "repeat_penalty": 1.1,
    }


# The "Generate request (With options)" example of the Ollama API reference (ollama/ollama docs/api.md).
OLLAMA_DOCS_OPTIONS = {
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
}


def test_ollama_options_reach_vllm_and_the_rest_is_dropped_with_a_note_each():
    req = parse(
        "/api/generate",
        {
            "model": "llama3.2",
            "prompt": "Why is the sky blue?",
            "stream": False,
            "options": OLLAMA_DOCS_OPTIONS,
        },
    )
    path, body = backend(req, "vllm")
    assert path == "/v1/chat/completions"
    sampling = {key: body[key] for key in body if key not in ("model", "messages", "stream", "request_id")}
    assert sampling == {
        "max_tokens": 100,
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.0,
        "seed": 42,
        "stop": ["\n", "user:"],
        "frequency_penalty": 1.0,
        "presence_penalty": 1.5,
        "repetition_penalty": 1.2,
    }
    dropped = {note.split(":")[0] for note in req.notes}
    assert dropped == {
        f"options.{name}"
        for name in OLLAMA_DOCS_OPTIONS
        if name
        not in (
            "seed",
            "num_predict",
            "top_k",
            "top_p",
            "min_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "stop",
        )
    }
    assert any("num_ctx" in note and "dropped by the gateway" in note for note in req.notes)
    assert any("mirostat" in note and "dropped for vllm" in note for note in req.notes)


def test_ollama_sampling_options_pass_through_to_ollama_and_load_time_ones_are_withheld():
    req = parse("/api/generate", {"model": "llama3.2", "prompt": "Why?", "options": OLLAMA_DOCS_OPTIONS})
    _, body = backend(req, "ollama")
    assert body["options"] == {
        name: value for name, value in OLLAMA_DOCS_OPTIONS.items() if name not in WITHHELD_OLLAMA_OPTIONS
    }
    assert {note.split(":")[0] for note in req.notes} == {
        f"options.{name}" for name in OLLAMA_DOCS_OPTIONS if name in WITHHELD_OLLAMA_OPTIONS
    }


def test_null_options_are_ignored_like_langchain_sends_them():
    options = {"num_ctx": None, "temperature": None, "mirostat": None, "stop": None}
    req = parse(
        "/api/embed", {"model": "nomic-embed-text", "input": ["a"], "options": options, "keep_alive": None}
    )
    _, ollama_body = backend(req, "ollama")
    assert ollama_body == {"model": "nomic-embed-text", "input": ["a"], "options": {}}
    chat = parse("/api/chat", {**CHAT, "options": options})
    _, vllm_body = backend(chat, "vllm")
    assert "temperature" not in vllm_body
    assert chat.notes == []


def test_unlimited_num_predict_sends_no_max_tokens_to_vllm():
    _, body = backend(parse("/api/chat", {**CHAT, "options": {"num_predict": -1}}), "vllm")
    assert "max_tokens" not in body


def test_raw_generate_goes_to_vllm_completions_without_the_16_token_default():
    req = parse("/api/generate", {"model": "m", "prompt": "[INST] hi [/INST]", "raw": True, "stream": False})
    path, body = backend(req, "vllm")
    assert path == "/v1/completions"
    assert body["prompt"] == "[INST] hi [/INST]"
    assert body["max_tokens"] is None


def test_streams_to_vllm_always_ask_for_usage():
    _, body = backend(parse("/api/chat", CHAT), "vllm")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    _, same_dialect = backend(parse("/v1/chat/completions", {**CHAT, "stream": True}), "vllm")
    assert same_dialect["stream_options"] == {"include_usage": True}


def test_keep_alive_is_withheld_from_both_engines_with_a_note():
    _, body = backend(parse("/v1/chat/completions", {**CHAT, "keep_alive": "10m"}), "ollama")
    assert "keep_alive" not in body
    req = parse("/api/chat", {**CHAT, "keep_alive": 0})
    _, vllm_body = backend(req, "vllm")
    assert "keep_alive" not in vllm_body
    assert [note.split(" (")[0] for note in req.notes] == ["keep_alive: dropped by the gateway"]


# -- same dialect ------------------------------------------------------------------------------


def test_openai_to_vllm_keeps_engine_specific_fields_and_rewrites_only_the_model():
    req = parse(
        "/v1/chat/completions", {**CHAT, "guided_regex": "[a-z]+", "n": 2, "logprobs": True, "user": "u"}
    )
    req.model = "meta-llama/Llama-3.2-3B-Instruct"
    path, body = backend(req, "vllm")
    assert path == "/v1/chat/completions"
    assert body == {
        **CHAT,
        "guided_regex": "[a-z]+",
        "n": 2,
        "logprobs": True,
        "user": "u",
        "model": "meta-llama/Llama-3.2-3B-Instruct",
        "request_id": "req-1",
    }
    assert req.requested_model == "llama3.2"


def test_ollama_to_ollama_keeps_engine_specific_fields():
    original = {
        "model": "llama3.2",
        "prompt": "x",
        "template": "{{ .Prompt }}",
        "context": [1, 2],
        "raw": False,
    }
    _, body = backend(parse("/api/generate", original), "ollama")
    assert body == original


# -- OpenAI client → Ollama --------------------------------------------------------------------


def test_openai_completions_become_a_raw_generate():
    path, body = backend(
        parse("/v1/completions", {"model": "m", "prompt": ["Say this is a test"], "suffix": "!"}), "ollama"
    )
    assert path == "/api/generate"
    assert body == {"model": "m", "prompt": "Say this is a test", "raw": True, "suffix": "!", "stream": False}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}),
        ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}),
        ("/v1/chat/completions", {**CHAT, "n": 3}),
        ("/v1/embeddings", {"model": "m", "input": [[1, 2], [3]]}),
    ],
)
def test_requests_ollama_cannot_answer_in_the_expected_shape_are_422(path, body):
    with pytest.raises(GatewayError) as caught:
        build_backend_request(parse(path, body), "ollama", "req-1")
    assert caught.value.status == 422


def test_fields_ollama_lacks_are_dropped_with_a_note_each():
    req = parse("/v1/chat/completions", {**CHAT, "logprobs": True, "user": "alice", "guided_regex": "x"})
    _, body = backend(req, "ollama")
    assert not {"logprobs", "user", "guided_regex"} & set(body)
    assert req.notes == [
        "logprobs: dropped for ollama (log-probabilities are not translated)",
        "user: dropped for ollama (the gateway knows the user from the API key)",
        "guided_regex: dropped for ollama (unknown field)",
    ]


def test_tool_choice_none_sends_no_tools_and_required_is_noted():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = parse("/v1/chat/completions", {**CHAT, "tools": tools, "tool_choice": "none"})
    _, body = backend(req, "ollama")
    assert "tools" not in body
    req = parse("/v1/chat/completions", {**CHAT, "tools": tools, "tool_choice": "required"})
    _, body = backend(req, "ollama")
    assert body["tools"] == tools
    assert req.notes == ["tool_choice: dropped for ollama (Ollama cannot force a tool call)"]


def test_response_formats_become_ollama_format():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    json_schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    _, body = backend(parse("/v1/chat/completions", {**CHAT, "response_format": json_schema}), "ollama")
    assert body["format"] == schema
    _, body = backend(
        parse("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}), "ollama"
    )
    assert body["format"] == "json"
    _, body = backend(parse("/v1/chat/completions", {**CHAT, "response_format": {"type": "text"}}), "ollama")
    assert "format" not in body


def test_ollama_format_becomes_vllm_response_format():
    # Schema from the "Chat request (Structured outputs)" example of ollama/ollama docs/api.md.
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
        "required": ["age", "available"],
    }
    _, body = backend(parse("/api/chat", {**CHAT, "format": schema}), "vllm")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": False},
    }
    _, body = backend(parse("/api/chat", {**CHAT, "format": "json"}), "vllm")
    assert body["response_format"] == {"type": "json_object"}


# -- thinking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("openai_fields", "think"),
    [
        ({"reasoning_effort": "high"}, "high"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, True),
        ({"chat_template_kwargs": {"enable_thinking": False}}, False),
        ({"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "low"}, False),
    ],
)
def test_openai_thinking_switches_become_ollama_think(openai_fields, think):
    _, body = backend(parse("/v1/chat/completions", {**CHAT, **openai_fields}), "ollama")
    assert body["think"] == think


@pytest.mark.parametrize(
    ("think", "vllm_fields"),
    [
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("medium", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "medium"}),
    ],
)
def test_ollama_think_becomes_vllm_chat_template_kwargs(think, vllm_fields):
    _, body = backend(parse("/api/chat", {**CHAT, "think": think}), "vllm")
    assert {key: body[key] for key in vllm_fields} == vllm_fields
    assert ("reasoning_effort" in body) == ("reasoning_effort" in vllm_fields)


# -- tool calls in the conversation ------------------------------------------------------------

# The tools and the model's call from the "Chat request (with tools)" example of ollama/ollama docs/api.md.
WEATHER_TOOL = {
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
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    },
}
OLLAMA_TOOL_HISTORY = [
    {"role": "user", "content": "What is the weather today in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"format": "celsius", "location": "Paris, FR"},
                }
            }
        ],
    },
    {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"},
]


def test_ollama_tool_history_gets_ids_that_pair_calls_with_results_for_vllm():
    _, body = backend(
        parse("/api/chat", {"model": "llama3.2", "messages": OLLAMA_TOOL_HISTORY, "tools": [WEATHER_TOOL]}),
        "vllm",
    )
    call = body["messages"][1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"format": "celsius", "location": "Paris, FR"}
    assert body["messages"][2] == {"role": "tool", "content": "22 degrees", "tool_call_id": call["id"]}
    assert body["tools"] == [WEATHER_TOOL]


def test_tool_history_ids_are_the_same_every_time():
    first = backend(parse("/api/chat", {"model": "m", "messages": OLLAMA_TOOL_HISTORY}), "vllm")
    again = backend(parse("/api/chat", {"model": "m", "messages": OLLAMA_TOOL_HISTORY}), "vllm")
    assert first == again


def test_openai_tool_results_get_the_tool_name_ollama_needs():
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'},
                },
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]
    _, body = backend(parse("/v1/chat/completions", {"model": "m", "messages": messages}), "ollama")
    assert body["messages"][1]["tool_calls"] == [
        {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {}}},
    ]
    assert body["messages"][2] == {"role": "tool", "content": "noon", "tool_name": "get_time"}
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "tool_name": "get_current_weather"}


def test_a_chat_survives_openai_to_ollama_to_vllm():
    original = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the weather today in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, FR"}'},
                    }
                ],
            },
            {"role": "tool", "content": "22 degrees", "tool_call_id": "call_1"},
        ],
        "tools": [WEATHER_TOOL],
        "temperature": 0.3,
        "stop": ["\n\n"],
        "max_tokens": 64,
    }
    _, ollama_body = backend(parse("/v1/chat/completions", original), "ollama")
    _, vllm_body = backend(parse("/api/chat", {**ollama_body, "stream": False}), "vllm")

    def comparable(messages):
        return [
            (
                m["role"],
                m["content"],
                [
                    (c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in m.get("tool_calls", [])
                ],
            )
            for m in messages
        ]

    assert comparable(vllm_body["messages"]) == comparable(original["messages"])
    assert vllm_body["messages"][3]["tool_call_id"] == vllm_body["messages"][2]["tool_calls"][0]["id"]
    assert (vllm_body["temperature"], vllm_body["stop"], vllm_body["max_tokens"]) == (0.3, ["\n\n"], 64)
    assert vllm_body["tools"] == [WEATHER_TOOL]


def test_generate_with_system_becomes_a_chat_for_vllm():
    req = parse("/api/generate", {"model": "m", "prompt": "Hi", "system": "Be brief.", "stream": False})
    _, body = backend(req, "vllm")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("field", ["suffix", "template", "context"])
def test_generate_fields_vllm_cannot_take_are_noted(field):
    req = parse("/api/generate", {"model": "m", "prompt": "Hi", field: [1] if field == "context" else "x"})
    _, body = backend(req, "vllm")
    assert field not in body
    assert [note.split(":")[0] for note in req.notes] == [field]


def test_token_id_prompts_are_estimated_by_their_length():
    req = parse("/v1/completions", {"model": "m", "prompt": [[1, 2, 3, 4, 5, 6, 7, 8]]})
    assert req.estimated_prompt_tokens == 8
    assert parse("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}).estimated_prompt_tokens == 3


@pytest.mark.parametrize(("effort", "think"), [("minimal", "low"), ("none", False), ("medium", "medium")])
def test_reasoning_efforts_map_to_ollama_think_levels(effort, think):
    _, body = backend(parse("/v1/chat/completions", {**CHAT, "reasoning_effort": effort}), "ollama")
    assert body["think"] == think


def test_a_reasoning_effort_ollama_cannot_express_still_reaches_vllm():
    req = parse("/v1/chat/completions", {**CHAT, "reasoning_effort": "xhigh"})
    assert req.think is None
    assert backend(req, "vllm")[1]["reasoning_effort"] == "xhigh"


def test_keep_alive_of_the_wrong_type_is_400():
    error = gateway_error("/v1/chat/completions", json.dumps({**CHAT, "keep_alive": ["5m"]}).encode())
    assert (error.status, error.code) == (400, "invalid_type")


def test_think_on_a_raw_prompt_is_noted_for_vllm():
    req = parse("/api/generate", {"model": "m", "prompt": "x", "raw": True, "think": True})
    _, body = backend(req, "vllm")
    assert "chat_template_kwargs" not in body
    assert [note.split(":")[0] for note in req.notes] == ["think"]


def test_a_chat_survives_ollama_to_vllm_to_ollama():
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    original = {
        "model": "llava",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is in this picture?", "images": [png]},
            *OLLAMA_TOOL_HISTORY[1:],
        ],
        "options": {
            "temperature": 0.3,
            "num_predict": 64,
            "top_k": 20,
            "repeat_penalty": 1.1,
            "stop": ["\n\n"],
        },
        "format": "json",
        "think": True,
        "stream": False,
    }
    _, vllm_body = backend(parse("/api/chat", original), "vllm")
    _, ollama_body = backend(parse("/v1/chat/completions", vllm_body), "ollama")
    assert ollama_body["messages"] == original["messages"]
    assert ollama_body["options"] == original["options"]
    assert (ollama_body["format"], ollama_body["think"], ollama_body["stream"]) == ("json", True, False)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("tool", [{"type": "web_search", "function": {"name": "search"}},
                                  {"type": "function", "function": {"name": None}}, "search"])
def test_tools_other_than_named_functions_are_refused_in_both_dialects(path, tool):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    with pytest.raises(GatewayError) as refused:
        parse_client_request(path, json.dumps(body).encode())
    assert refused.value.status == 422 and "tools[0]" in refused.value.message
