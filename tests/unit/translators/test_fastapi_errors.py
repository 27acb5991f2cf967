"""What vLLM's FastAPI answers itself (`{"detail": ...}`) reaches callers as a clean error of their dialect."""

from __future__ import annotations

import json

from translators.pipeline import translate_backend_error

# FastAPI's own bodies: an unrouted path, and its request validation errors (FastAPI docs, "Handling Errors").
NOT_FOUND = b'{"detail": "Not Found"}'
VALIDATION = json.dumps({"detail": [
    {"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}},
    {"type": "int_parsing", "loc": ["body", "max_tokens"], "msg": "Input should be a valid integer", "input": "x"},
]}).encode()


def test_a_detail_string_becomes_an_openai_error_with_its_message():
    status, body = translate_backend_error("vllm", 404, NOT_FOUND, "openai")
    assert status == 404
    assert json.loads(body)["error"]["message"] == "Not Found"
    assert json.loads(body)["error"]["type"] == "not_found_error"


def test_validation_errors_name_each_field_and_problem_in_ollamas_shape():
    status, body = translate_backend_error("vllm", 422, VALIDATION, "ollama")
    assert status == 422
    assert json.loads(body) == {
        "error": "invalid request: messages: Field required; max_tokens: Input should be a valid integer"}


def test_a_detail_on_a_server_error_is_a_502_with_the_message():
    status, body = translate_backend_error("vllm", 500, b'{"detail": "Internal Server Error"}', "openai")
    assert status == 502 and json.loads(body)["error"]["message"] == "Internal Server Error"
