"""A caller's JSON schema never makes the gateway fetch anything, and validating against it is bounded."""

import json
import re
import time
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.canonical import ResponseFormat
from translators.errors import GatewayError
from translators.pipeline import build_backend_request, parse_client_request, response_translator
from translators.structured import validate_output

REMOTE_REFS = [
    {"$ref": "http://127.0.0.1:9/x"},
    {"$ref": "file:///etc/passwd"},
    {"type": "object", "properties": {"a": {"$ref": "http://169.254.169.254/latest/meta-data"}}},
    {"$id": "http://127.0.0.1:9/root.json", "$ref": "other.json"},
    {"$dynamicRef": "http://127.0.0.1:9/x"},
    {"definitions": {"a": {"$ref": "https://example.com/schema.json"}}, "$ref": "#/definitions/a"},
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL fails the test (jsonschema's default retrieval uses urlopen)."""
    opened = []

    def refuse(url, *args, **kwargs):
        opened.append(url)
        raise AssertionError(f"the gateway tried to open {url!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return opened


def ollama_chat(schema: dict) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "format": schema}
    ).encode()


def openai_chat(schema: dict, strict: bool = True) -> bytes:
    return json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": schema, "strict": strict},
            },
        }
    ).encode()


@pytest.mark.parametrize("schema", REMOTE_REFS, ids=lambda schema: json.dumps(schema)[:40])
@pytest.mark.parametrize(
    ("path", "body"), [("/api/chat", ollama_chat), ("/v1/chat/completions", openai_chat)]
)
def test_a_schema_with_a_remote_ref_is_refused_with_400_before_anything_is_fetched(
    no_network, schema, path, body
):
    with pytest.raises(GatewayError) as caught:
        parse_client_request(path, body(schema))
    assert caught.value.status == 400
    assert "$ref" in caught.value.message or "Ref" in caught.value.message
    assert no_network == []


@pytest.mark.parametrize("schema", REMOTE_REFS, ids=lambda schema: json.dumps(schema)[:40])
def test_validating_output_never_fetches_even_for_a_schema_that_skipped_the_request_check(no_network, schema):
    result = validate_output(ResponseFormat("json_schema", schema), '{"a": 1}')
    assert no_network == []
    assert result["valid"] is False
    assert result["errors"]


@pytest.mark.parametrize(
    "schema",
    [{"$ref": "#/$defs/missing"}, {"$ref": "#"}, {"allOf": [{"$ref": "#/allOf/0"}]}],
    ids=["unresolvable", "self-cycle", "indirect-cycle"],
)
def test_a_schema_that_cannot_be_evaluated_is_a_reported_validation_result_not_an_exception(schema):
    result = validate_output(ResponseFormat("json_schema", schema), '{"a": 1}')
    assert result["valid"] is False
    assert result["errors"]


def test_strict_output_against_a_broken_schema_is_an_error_in_the_callers_dialect_not_a_crash():
    req = parse_client_request("/v1/chat/completions", openai_chat({"$ref": "#"}))
    build_backend_request(req, "ollama", "req-1")
    translator = response_translator(req, "ollama", "req-1", 1700000000)
    answer = {"model": "m", "message": {"role": "assistant", "content": "{}"}, "done": True}
    status, body = translator.translate_body(200, json.dumps(answer).encode())
    assert status == 502
    assert "error" in json.loads(body)


def test_a_catastrophic_backtracking_pattern_is_matched_in_linear_time():
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}}
    output = json.dumps({"name": "a" * 5000 + "!"})
    started = time.perf_counter()
    result = validate_output(ResponseFormat("json_schema", schema), output)
    assert time.perf_counter() - started < 5.0
    assert result["valid"] is False
    assert "does not match" in result["errors"][0]


def test_pattern_properties_and_additional_properties_use_the_bounded_matcher():
    schema = {
        "type": "object",
        "patternProperties": {"^(a|aa)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    started = time.perf_counter()
    result = validate_output(
        ResponseFormat("json_schema", schema), json.dumps({"a" * 3000 + "b": 1, "aaa": 2})
    )
    assert time.perf_counter() - started < 5.0
    assert result["valid"] is False
    assert validate_output(ResponseFormat("json_schema", schema), '{"aaaa": 1}')["valid"] is True


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^[A-Z]{2}-\\d{4}$", "AB-1234", True),
        ("^[A-Z]{2}-\\d{4}$", "AB-12345", False),
        ("\\d+", "abc 42 def", True),
        ("^(\\d{1,3}\\.){3}\\d{1,3}$", "192.168.0.1", True),
        ("^(\\d{1,3}\\.){3}\\d{1,3}$", "192.168.0", False),
        ("^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", "ada@example.org", True),
        ("^(foo|bar)*baz$", "foobarfoobaz", True),
        ("^(foo|bar)*baz$", "foobaxbaz", False),
        ("colou?r\\b", "the colour red", True),
        ("^\\w+$", "héllo_1", True),
        ("^\\s*$", " \t", True),
        ("a.c", "a\nc", False),
        ("^$", "", True),
        ("x{0}y", "y", True),
    ],
)
def test_the_bounded_matcher_agrees_with_python_re_on_ordinary_patterns(pattern, text, matches):
    schema = {"type": "string", "pattern": pattern}
    assert validate_output(ResponseFormat("json_schema", schema), json.dumps(text))["valid"] is matches


def test_an_exponential_combination_of_subschemas_stops_at_the_validation_budget():
    depth = 24
    defs = {
        f"d{n}": {"oneOf": [{"$ref": f"#/$defs/d{n + 1}"}, {"$ref": f"#/$defs/d{n + 1}"}]}
        for n in range(depth)
    }
    defs[f"d{depth}"] = {"type": "string"}
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    started = time.perf_counter()
    result = validate_output(ResponseFormat("json_schema", schema), "1")
    assert time.perf_counter() - started < 5.0
    assert result["valid"] is False
    assert any("budget" in error for error in result["errors"])


def test_unique_items_over_many_distinct_objects_is_checked_quickly():
    schema = {"type": "array", "uniqueItems": True}
    items = [{"n": n} for n in range(20000)]
    started = time.perf_counter()
    assert validate_output(ResponseFormat("json_schema", schema), json.dumps(items))["valid"] is True
    assert (
        validate_output(ResponseFormat("json_schema", schema), json.dumps([*items, {"n": 5}]))["valid"]
        is False
    )
    assert validate_output(ResponseFormat("json_schema", schema), "[1, 1.0]")["valid"] is False
    assert validate_output(ResponseFormat("json_schema", schema), "[1, true]")["valid"] is True
    assert time.perf_counter() - started < 5.0


def test_an_oversized_output_is_reported_not_validated():
    schema = {"type": "array"}
    result = validate_output(ResponseFormat("json_schema", schema), json.dumps(["x" * 1000] * 2000))
    assert result["valid"] is False
    assert "too large" in result["errors"][0]


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "(a"}, "pattern"),
        ({"type": "string", "pattern": "(a)\\1"}, "pattern"),
        ({"type": "string", "pattern": "x" * 2000}, "pattern"),
        ({"properties": {f"p{n}": {"type": "string"} for n in range(5000)}}, "schema"),
        ({"enum": list(range(200_000))}, "schema"),
        ({"$schema": "http://127.0.0.1:9/meta", "type": "object"}, "$schema"),
    ],
    ids=[
        "unbalanced",
        "backreference",
        "too-long-pattern",
        "too-many-nodes",
        "huge-enum",
        "unknown-metaschema",
    ],
)
def test_schemas_the_gateway_cannot_check_safely_are_400_at_request_time(no_network, schema, words):
    with pytest.raises(GatewayError) as caught:
        parse_client_request("/api/chat", ollama_chat(schema))
    assert caught.value.status == 400
    assert words in caught.value.message
    assert no_network == []


def test_local_refs_and_ordinary_schemas_are_still_accepted_and_validated():
    schema = {
        "$defs": {"step": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
            "id": {"pattern": "^[a-z]+$"},
        },
    }
    req = parse_client_request("/api/chat", ollama_chat(schema))
    assert validate_output(req.response_format, '{"steps": [{"n": 1}], "id": "abc"}') == {
        "valid": True,
        "errors": [],
    }
    assert validate_output(req.response_format, '{"steps": [{"m": 1}]}')["valid"] is False


@pytest.mark.parametrize("schema", REMOTE_REFS, ids=lambda schema: json.dumps(schema)[:40])
def test_the_output_validator_itself_resolves_nothing_outside_the_schema(no_network, schema):
    from translators.structured import _BUDGET, ValidationBudgetExceeded, _Budget, output_validator

    token = _BUDGET.set(_Budget(10_000))
    try:
        with pytest.raises(Exception) as caught:
            list(output_validator(schema).iter_errors({"a": 1}))
    finally:
        _BUDGET.reset(token)
    assert not isinstance(caught.value, (AssertionError, ValidationBudgetExceeded))
    assert no_network == []


class _Unbounded:
    def spend(self, steps: int) -> None:
        pass


_atoms = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", "\\d", "\\w", "\\s", "\\b", "^", "$", "\\n"])


@st.composite
def _patterns(draw, depth: int = 0) -> str:
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        if depth < 2 and draw(st.booleans()):
            inner = "|".join(draw(_patterns(depth + 1)) for _ in range(draw(st.integers(1, 2))))
            piece = f"({inner})"
        else:
            piece = draw(_atoms)
        if piece not in ("^", "$", "\\b"):
            piece += draw(st.sampled_from(["", "*", "+", "?", "{2}", "{1,3}", "{2,}", "*?"]))
        pieces.append(piece)
    return "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(pattern=_patterns(), text=st.text(alphabet="ab1 \n_", max_size=8))
def test_the_bounded_matcher_finds_what_python_re_finds(pattern, text):
    from translators.bounded_regex import compile_pattern

    assert compile_pattern(pattern).search(text, _Unbounded()) == (re.search(pattern, text) is not None)
