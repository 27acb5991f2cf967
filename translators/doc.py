"""Renders docs/translation.md from the mapping tables: `python -m translators.doc > docs/translation.md`."""

from __future__ import annotations

from translators.anthropic_request import ANTHROPIC_FIELDS
from translators.anthropic_response import STOP_REASONS
from translators.bounded_regex import MAX_PATTERN_LENGTH, MAX_STATES
from translators.canonical import OLLAMA_ENGINE, VLLM_ENGINE, CanonicalRequest
from translators.errors import ANTHROPIC_ERROR_TYPES, GatewayError
from translators.mapping import (
    CALLER_FIELD_POLICY,
    CLIENT_ENDPOINTS,
    FINISH_REASONS_FROM_OLLAMA,
    NATIVE_ENDPOINTS,
    OLLAMA_DONE_REASONS,
    OLLAMA_FIELDS_FOR_VLLM,
    OLLAMA_NATIVE_SINCE,
    OLLAMA_ONLY_OPTIONS,
    OPENAI_FIELDS_FOR_OLLAMA,
    SAMPLING_PARAMETERS,
    WITHHELD_OLLAMA_OPTIONS,
    FieldRule,
)
from translators.pipeline import backend_path
from translators.request_body import MAX_NESTING_DEPTH
from translators.responses_request import RESPONSES_FIELDS
from translators.structured import (
    ENUM_STEPS,
    ERROR_STEPS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    MAX_VALIDATED_OUTPUT_CHARS,
    REFERENCE_STEPS,
    VALIDATION_STEP_BUDGET,
)

HEADER = """\
# Translation reference

Generated from `translators/mapping.py` by `python -m translators.doc > docs/translation.md`;
a unit test fails when this file and the code disagree.

A request in the engine's own dialect (OpenAI client → vLLM, Ollama client → Ollama) passes through
whole, less what the caller policy below withholds: every other field reaches the engine, every byte
of the answer reaches the client. The gateway changes only `model` (to the backend's name), drops
nulls from Ollama bodies, and asks vLLM streams for `stream_options.include_usage`, removing that
usage chunk again when the client did not ask. The tables after the caller policy govern the
crossings. Null values count as absent everywhere.
"""


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    return lines


def engine_cell(req: CanonicalRequest, engine: str) -> str:
    try:
        return f"`{backend_path(req, engine)}`"
    except GatewayError:
        return "not served (refused before queueing)"


def native_cell(endpoint: str, since: tuple[int, ...] | None) -> str:
    if since is None:
        return "translated, as above (Ollama serves no such API)"
    return f"`{endpoint}` (Ollama {'.'.join(map(str, since))} on)"


def route_rows() -> list[tuple[str, ...]]:
    rows = []
    for endpoint, (dialect, kind) in CLIENT_ENDPOINTS.items():
        req = CanonicalRequest(dialect, endpoint, kind, "model", False, {})
        rows.append((f"`{endpoint}`", engine_cell(req, OLLAMA_ENGINE), engine_cell(req, VLLM_ENGINE)))
        if endpoint in NATIVE_ENDPOINTS:
            rows.append((f"`{endpoint}`, to an engine that serves it",
                         native_cell(endpoint, OLLAMA_NATIVE_SINCE.get(endpoint)), f"`{endpoint}` (where vLLM routes it)"))
        if endpoint == "/api/generate":
            req.raw_prompt = True
            rows.append(
                (
                    "`/api/generate` with `raw: true`",
                    f"`{backend_path(req, OLLAMA_ENGINE)}`",
                    f"`{backend_path(req, VLLM_ENGINE)}`",
                )
            )
    return rows


def field_rows(rules: tuple[FieldRule, ...]) -> list[tuple[str, ...]]:
    return [
        (
            f"`{rule.field}`",
            ", ".join(f"`{endpoint}`" for endpoint in rule.endpoints),
            rule.treatment,
            rule.becomes,
        )
        for rule in rules
    ]


def policy_lines() -> list[str]:
    lines = ["## What a caller may set", ""]
    lines.append(
        "Whichever engine answers, a caller steers no engine-side fetching, request ids, model residency "
        "or resource size. Refusals are 400s in the caller's dialect when the request arrives; what is "
        "dropped or replaced is noted on the request (audit log). Every other field passes."
    )
    lines.append("")
    lines += table(("field", "endpoints", "the gateway", "why"), field_rows(CALLER_FIELD_POLICY))
    lines += ["", "### Ollama options", ""]
    lines.append(
        "The options of the sampling table below and the Ollama-only samplers pass. These are dropped "
        "for both engines, and so is any option none of these tables names:"
    )
    lines.append("")
    lines += table(("option", "why"), [(f"`{name}`", why) for name, why in WITHHELD_OLLAMA_OPTIONS.items()])
    lines += ["", "### Bodies and JSON schemas", ""]
    lines += [
        f"- A body nested more than {MAX_NESTING_DEPTH} levels deep, a string or key holding an unpaired "
        "UTF-16 surrogate (`\\ud800`), or a number JSON cannot carry (`NaN`, `Infinity`, `1e999`) is a 400.",
        "- A JSON schema (`format`, `response_format.json_schema.schema`, tool parameters, `guided_json`) "
        "may refer only within itself (`$ref`, `$dynamicRef`, `$recursiveRef` start with `#`), hold at most "
        f"{MAX_SCHEMA_NODES} JSON values nested at most {MAX_SCHEMA_DEPTH} levels, and must not combine "
        "`patternProperties` with `unevaluatedProperties`; otherwise 400. The gateway never fetches a "
        "schema: its validators resolve references in an empty registry that refuses every URI.",
        f"- `pattern` and `patternProperties` regexes (at most {MAX_PATTERN_LENGTH} characters) are matched "
        "by a linear-time automaton, never by Python's backtracking `re`: backreferences, lookaround, "
        "conditionals, atomic groups, possessive repeats and the flags `(?i)`, `(?m)`, `(?s)`, `(?a)` are "
        f"refused (400), and counted repeats may unroll into at most {MAX_STATES} states.",
        f"- Structured output over {MAX_VALIDATED_OUTPUT_CHARS} characters is not validated, and validation "
        f"stops after {VALIDATION_STEP_BUDGET} steps (a keyword evaluated, a character through a regex "
        f"state, an item compared by `uniqueItems`; a reference counts {REFERENCE_STEPS}, an error passed "
        f"up {ERROR_STEPS}, each enum value {ENUM_STEPS}); either is recorded as an invalid result (a strict "
        "schema then answers 502). Validation never raises.",
    ]
    return lines


def render() -> str:
    lines = [HEADER, "## Routes", ""]
    lines += table(("client endpoint", "Ollama engine", "vLLM engine"), route_rows())
    lines += [""] + policy_lines()
    lines += ["", "## Sampling and limits", ""]
    lines += table(
        ("canonical", "OpenAI / vLLM (top level)", "Ollama (`options`)", "note"),
        [
            (
                f"`{parameter.canonical}`",
                " / ".join(f"`{name}`" for name in parameter.openai),
                f"`{parameter.ollama}`",
                parameter.note,
            )
            for parameter in SAMPLING_PARAMETERS
        ],
    )
    lines += ["", "## Ollama options without a vLLM equivalent", ""]
    lines.append("Passed through to Ollama; dropped for vLLM with a note on the request, because:")
    lines.append("")
    lines += table(
        ("option", "why vLLM cannot take it"),
        [(f"`{name}`", why) for name, why in OLLAMA_ONLY_OPTIONS.items()],
    )
    lines += ["", "## OpenAI client → Ollama engine", ""]
    lines += table(("field", "endpoints", "treatment", "becomes / why"), field_rows(OPENAI_FIELDS_FOR_OLLAMA))
    lines.append("")
    lines.append("Sampling fields follow the sampling table; any other field is dropped with a note.")
    lines += ["", "## Ollama client → vLLM engine", ""]
    lines += table(("field", "endpoints", "treatment", "becomes / why"), field_rows(OLLAMA_FIELDS_FOR_VLLM))
    lines.append("")
    lines.append("Any other field is dropped with a note.")
    lines += ["", "## Finish reasons", ""]
    lines += table(
        ("OpenAI `finish_reason`", "Ollama `done_reason`"),
        [(f"`{reason}`", f"`{done}`") for reason, done in OLLAMA_DONE_REASONS.items()],
    )
    mapped = ", ".join(f"`{done}` → `{reason}`" for done, reason in FINISH_REASONS_FROM_OLLAMA.items())
    lines.append("")
    lines.append(
        f"From Ollama: {mapped}; any other reason → `stop`, or `tool_calls` when the model called tools."
    )
    return "\n".join(lines + anthropic_lines() + responses_lines() + vllm_api_lines()) + "\n"


def anthropic_lines() -> list[str]:
    lines = ["", "## Anthropic client → either engine", ""]
    lines += [
        "An engine that serves the Messages API itself (vLLM where its OpenAPI document lists `/v1/messages`; "
        "Ollama from 0.14, `/v1/messages` only) gets the caller's body, less the fields the table below "
        "drops or refuses, with image URLs replaced by the bytes the gateway fetched, and, for vLLM, "
        "`thinking` also set as `chat_template_kwargs.enable_thinking` (vLLM's Messages API makes `budget_tokens` "
        "a thinking-token budget, which a vLLM without a reasoning parser refuses, and leaves the template's switch "
        "alone). The caller gets the engine's events and Message as they are (the engine's ids, no `ping`, "
        "and from Ollama unsigned thinking and a first input count that is an estimate); "
        "the gateway reads the text, the tool calls and the exact usage from them for the audit log and the "
        "quota. A request that asks what the engine's own API would ignore is translated instead (Ollama's reads "
        "no `output_config.format` and no `adaptive` thinking; its chat does). The gateway option "
        "`native_messages_api=false` translates every Messages request. "
        "A failover may go from an engine that serves the API to one that does not: each attempt is built "
        "for its own engine.",
        "",
        "Every other engine gets a chat in the canonical form, written as the tables above say, and the "
        "answer comes back as a Message. `/v1/messages/count_tokens` is then the same chat generating one "
        "token: its `input_tokens` is the engine's exact prompt count, the one `/v1/messages` reports for the "
        "same request. The key comes as `x-api-key` or `Authorization: Bearer`; an `anthropic-version` header "
        "must be a version date from 2023-01-01 on.",
    ]
    lines.append("")
    lines += table(("field", "endpoints", "treatment", "becomes / why"), field_rows(ANTHROPIC_FIELDS))
    lines.append("")
    lines.append("Any other field is dropped with a note. A refused field or block is a 400.")
    lines += ["", "### Stop reasons", ""]
    lines += table(
        ("canonical `finish_reason`", "Anthropic `stop_reason`"),
        [(f"`{reason}`", f"`{stop}`") for reason, stop in STOP_REASONS.items()],
    )
    lines.append("")
    lines.append("Any answer with a tool call stops with `tool_use`.")
    lines += ["", "### Errors", ""]
    lines.append(
        'Every error on these paths, the gateway\'s own included, is `{"type": "error", "error": {"type", '
        '"message"}}` with the status deciding the type; any other 4xx is `invalid_request_error`, any other '
        "5xx `api_error`. A stream that fails after it started ends with an `error` event of that shape."
    )
    lines.append("")
    lines += table(("status", "`error.type`"), [(str(status), f"`{kind}`") for status, kind in ANTHROPIC_ERROR_TYPES.items()])
    return lines


def responses_lines() -> list[str]:
    lines = ["", "## OpenAI Responses client → either engine", ""]
    lines.append(
        "`POST /v1/responses` is a chat in the canonical form, written for each engine as the tables above say; "
        "the answer comes back as a Response object: a `reasoning` item when the model thought, a `message` "
        "item with one `output_text` part, a `function_call` item per tool call, usage as `input_tokens` / "
        "`output_tokens`, status `incomplete` when the output was cut at `max_output_tokens`. "
        "`GET /v1/responses/{id}` and `DELETE /v1/responses/{id}` read and remove a stored answer, its owner's "
        "alone (404 for anyone else). Errors are OpenAI's shape; a stream that fails after it started ends "
        "with an error event."
    )
    lines.append("")
    lines += table(("field", "endpoints", "treatment", "becomes / why"), field_rows(RESPONSES_FIELDS))
    lines.append("")
    lines.append("Any other field is ignored. A rejected field, a hosted tool or an unknown item type is a 400.")
    return lines


def vllm_api_lines() -> list[str]:
    lines = ["", "## vLLM's rerank, score and tokenize", ""]
    lines.append(
        "`/v1/rerank`, `/v1/score`, `/v1/tokenize` and vLLM's own `/rerank`, `/score`, `/tokenize` pass through "
        "as the caller wrote them (the model resolved) to a vLLM node whose runner routes them: vLLM routes "
        "rerank and score for a pooling model, tokenize for any, and the gateway reads which from each node's "
        "`/openapi.json`. A model no such node serves is refused with a 400 before it queues. Usage is vLLM's "
        "count: `usage.prompt_tokens` (score), `usage.total_tokens` (rerank), the token `count` (tokenize)."
    )
    return lines


if __name__ == "__main__":
    print(render(), end="")
