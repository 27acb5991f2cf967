"""What a caller may set: nothing that steers an engine's fetching, request ids, residency or size."""

import json

import pytest

from translators.errors import GatewayError
from translators.mapping import CALLER_FIELD_POLICY, DROPPED, REFUSED, WITHHELD_OLLAMA_OPTIONS
from translators.pipeline import build_backend_request, parse_client_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BASE_BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/embeddings": {"model": "m", "input": "hi"},
    "/api/chat": CHAT,
    "/api/generate": {"model": "m", "prompt": "hi"},
    "/api/embed": {"model": "m", "input": "hi"},
    "/api/embeddings": {"model": "m", "prompt": "hi"},
}


def parse(path: str, body: dict):
    return parse_client_request(path, json.dumps(body).encode())


def build(path: str, body: dict, engine: str) -> tuple[dict, list[str]]:
    req = parse(path, body)
    return json.loads(build_backend_request(req, engine, "req-1")[1]), req.notes


def refusal(path: str, body: dict) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(path, body)
    return caught.value


@pytest.mark.parametrize(
    "part",
    [
        {"type": "video_url", "video_url": {"url": "http://127.0.0.1:9/v.mp4"}},
        {"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "image_embeds", "image_embeds": "AAAA"},
        {"image_url": {"url": "http://127.0.0.1:9/i.png"}},
    ],
    ids=lambda part: part.get("type", "untyped"),
)
def test_content_parts_other_than_text_and_images_are_400_naming_the_type(part):
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]}
    error = refusal("/v1/chat/completions", body)
    assert error.status == 400
    assert repr(part.get("type")) in error.message or str(part.get("type")) in error.message
    assert "text, image_url" in error.message
    assert "messages[0].content[1]" in error.message


def test_the_gateways_request_id_wins_over_the_callers():
    body, notes = build("/v1/chat/completions", {**CHAT, "request_id": "chosen-by-caller"}, "vllm")
    assert body["request_id"] == "req-1"
    assert any(note.startswith("request_id:") for note in notes)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"])
@pytest.mark.parametrize("keep_alive", [-1, 0, "24h"])
def test_a_callers_keep_alive_never_reaches_ollama(path, keep_alive):
    body, notes = build(path, {**BASE_BODIES[path], "keep_alive": keep_alive}, "ollama")
    assert "keep_alive" not in body
    assert any(note.startswith("keep_alive:") for note in notes)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_an_openai_callers_keep_alive_never_reaches_ollama_either(path):
    body, _ = build(path, {**BASE_BODIES[path], "keep_alive": -1}, "ollama")
    assert "keep_alive" not in body


@pytest.mark.parametrize(
    "option",
    ["num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mlock", "num_thread", "low_vram", "whatever"],
)
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
def test_options_that_reload_or_resize_the_model_never_reach_ollama(option, path):
    options = {option: 65536, "temperature": 0.2, "mirostat": 1}
    body, notes = build(path, {**BASE_BODIES[path], "options": options}, "ollama")
    assert option not in body.get("options", {})
    assert f"options.{option}: dropped" in " ".join(notes)
    if path != "/api/embed":
        assert body["options"] == {"temperature": 0.2, "mirostat": 1}


@pytest.mark.parametrize(
    "field",
    [
        "priority",
        "logits_processors",
        "vllm_xargs",
        "kv_transfer_params",
        "mm_processor_kwargs",
        "chat_template",
    ],
)
def test_vllm_fields_that_bypass_the_gateways_policy_are_dropped(field):
    body, notes = build(
        "/v1/chat/completions", {**CHAT, field: {"x": 1} if field != "priority" else -100}, "vllm"
    )
    assert field not in body
    assert any(note.startswith(f"{field}: dropped") for note in notes)


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/completions", "prompt_embeds", "AAAA"),
        ("/v1/embeddings", "messages", [{"role": "user", "content": "hi"}]),
        ("/v1/chat/completions", "n", 64),
        ("/v1/completions", "best_of", 64),
    ],
)
def test_fields_that_fetch_or_multiply_work_on_the_engine_are_400(path, field, value):
    error = refusal(path, {**BASE_BODIES[path], field: value})
    assert error.status == 400
    assert field in error.message


def test_a_few_choices_are_still_allowed():
    body, _ = build("/v1/chat/completions", {**CHAT, "n": 2}, "vllm")
    assert body["n"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("guided_json", {"$ref": "http://127.0.0.1:9/x"}),
        ("guided_json", json.dumps({"$ref": "http://127.0.0.1:9/x"})),
        ("structured_outputs", {"json": {"$ref": "http://127.0.0.1:9/x"}}),
        (
            "response_format",
            {
                "type": "structural_tag",
                "structures": [{"begin": "<f>", "schema": {"$ref": "http://x/"}, "end": "</f>"}],
            },
        ),
        (
            "tools",
            [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "http://127.0.0.1:9/x"}}}],
        ),
    ],
    ids=["guided_json", "guided_json-text", "structured_outputs", "structural_tag", "tool-parameters"],
)
def test_schemas_an_engine_would_compile_are_held_to_local_refs_too(field, value):
    error = refusal("/v1/chat/completions", {**CHAT, field: value})
    assert error.status == 400
    assert "$ref" in error.message


def test_legitimate_sampling_and_vllm_options_still_pass():
    extras = {"temperature": 0.1, "top_k": 5, "min_tokens": 2, "guided_regex": "[a-z]+", "cache_salt": "s"}
    body, notes = build("/v1/chat/completions", {**CHAT, **extras}, "vllm")
    assert {key: body[key] for key in extras} == extras
    assert notes == []


def test_the_policy_table_lists_every_treatment_with_a_reason():
    assert {rule.treatment for rule in CALLER_FIELD_POLICY} >= {DROPPED, REFUSED}
    assert all(rule.becomes for rule in CALLER_FIELD_POLICY)
    assert "num_ctx" in WITHHELD_OLLAMA_OPTIONS and "temperature" not in WITHHELD_OLLAMA_OPTIONS
