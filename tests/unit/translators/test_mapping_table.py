"""The mapping tables are what the code does, and docs/translation.md is what the tables say."""

import json
from pathlib import Path

import pytest

from translators.doc import render
from translators.mapping import (
    DROPPED,
    OLLAMA_FIELDS_FOR_VLLM,
    OLLAMA_ONLY_OPTIONS,
    OPENAI_FIELDS_FOR_OLLAMA,
    SAMPLING_PARAMETERS,
)
from translators.pipeline import build_backend_request, parse_client_request

DOC = Path(__file__).resolve().parents[3] / "docs" / "translation.md"

SAMPLE_VALUES = {"integer": 3, "number": 0.5, "stop": ["END"]}


def test_docs_translation_md_is_generated_from_the_tables():
    assert DOC.read_text() == render(), "regenerate with: python -m translators.doc > docs/translation.md"


def build(path: str, body: dict, engine: str) -> tuple[dict, list[str]]:
    req = parse_client_request(path, json.dumps(body).encode())
    return json.loads(build_backend_request(req, engine, "req-1")[1]), req.notes


CHAT_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("parameter", SAMPLING_PARAMETERS, ids=lambda parameter: parameter.canonical)
def test_every_sampling_parameter_crosses_from_openai_to_ollama(parameter):
    value = SAMPLE_VALUES[parameter.value_type]
    for name in parameter.openai:
        body, _ = build(
            "/v1/chat/completions", {"model": "m", "messages": CHAT_MESSAGES, name: value}, "ollama"
        )
        assert body["options"] == {parameter.ollama: value}


@pytest.mark.parametrize("parameter", SAMPLING_PARAMETERS, ids=lambda parameter: parameter.canonical)
def test_every_sampling_parameter_crosses_from_ollama_to_vllm(parameter):
    value = SAMPLE_VALUES[parameter.value_type]
    body, notes = build(
        "/api/chat", {"model": "m", "messages": CHAT_MESSAGES, "options": {parameter.ollama: value}}, "vllm"
    )
    assert body[parameter.openai[-1]] == value
    assert notes == []


@pytest.mark.parametrize("option", OLLAMA_ONLY_OPTIONS)
def test_every_ollama_only_option_reaches_ollama_and_is_noted_for_vllm(option):
    request = {"model": "m", "messages": CHAT_MESSAGES, "options": {option: 1}}
    ollama_body, _ = build("/api/chat", request, "ollama")
    vllm_body, notes = build("/api/chat", request, "vllm")
    assert ollama_body["options"] == {option: 1}
    assert option not in json.dumps(vllm_body)
    assert notes == [f"options.{option}: dropped for vllm ({OLLAMA_ONLY_OPTIONS[option]})"]


DROPPED_SAMPLES = {
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "echo": True,
    "best_of": 2,
    "parallel_tool_calls": False,
    "user": "alice",
    "service_tier": "auto",
    "store": False,
    "metadata": {"k": "v"},
    "modalities": ["text"],
    "audio": {"voice": "alloy"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "suffix": "x",
    "template": "{{ .Prompt }}",
    "context": [1, 2],
    "keep_alive": "5m",
    "truncate": True,
    "options": {"temperature": 1},
}
BASE_BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": CHAT_MESSAGES},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/embeddings": {"model": "m", "input": "hi"},
    "/api/chat": {"model": "m", "messages": CHAT_MESSAGES},
    "/api/generate": {"model": "m", "prompt": "hi"},
    "/api/embed": {"model": "m", "input": "hi"},
    "/api/embeddings": {"model": "m", "prompt": "hi"},
}
DROPPED_CASES = [
    (rule, endpoint, engine)
    for rules, engine in ((OPENAI_FIELDS_FOR_OLLAMA, "ollama"), (OLLAMA_FIELDS_FOR_VLLM, "vllm"))
    for rule in rules
    if rule.treatment == DROPPED
    for endpoint in rule.endpoints
]


@pytest.mark.parametrize(
    ("rule", "endpoint", "engine"), DROPPED_CASES, ids=lambda value: getattr(value, "field", value)
)
def test_every_dropped_field_is_left_out_with_its_reason_noted(rule, endpoint, engine):
    body, notes = build(endpoint, {**BASE_BODIES[endpoint], rule.field: DROPPED_SAMPLES[rule.field]}, engine)
    assert rule.field not in body
    assert f"{rule.field}: dropped for {engine} ({rule.becomes})" in notes
