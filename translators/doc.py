"""Renders docs/translation.md from the mapping tables: `python -m translators.doc > docs/translation.md`."""

from __future__ import annotations

from translators.canonical import OLLAMA_ENGINE, VLLM_ENGINE, CanonicalRequest
from translators.mapping import (
    CLIENT_ENDPOINTS,
    FINISH_REASONS_FROM_OLLAMA,
    OLLAMA_DONE_REASONS,
    OLLAMA_FIELDS_FOR_VLLM,
    OLLAMA_ONLY_OPTIONS,
    OPENAI_FIELDS_FOR_OLLAMA,
    SAMPLING_PARAMETERS,
    FieldRule,
)
from translators.pipeline import backend_path

HEADER = """\
# Translation reference

Generated from `translators/mapping.py` by `python -m translators.doc > docs/translation.md`;
a unit test fails when this file and the code disagree.

A request in the engine's own dialect (OpenAI client → vLLM, Ollama client → Ollama) passes through
whole: every field reaches the engine, every byte of the answer reaches the client. The gateway
changes only `model` (to the backend's name), drops nulls from Ollama bodies, and asks vLLM streams
for `stream_options.include_usage`, removing that usage chunk again when the client did not ask.
The tables below govern the crossings. Null values count as absent everywhere.
"""


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    return lines


def route_rows() -> list[tuple[str, ...]]:
    rows = []
    for endpoint, (dialect, kind) in CLIENT_ENDPOINTS.items():
        req = CanonicalRequest(dialect, endpoint, kind, "model", False, {})
        rows.append(
            (f"`{endpoint}`", f"`{backend_path(req, OLLAMA_ENGINE)}`", f"`{backend_path(req, VLLM_ENGINE)}`")
        )
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


def render() -> str:
    lines = [HEADER, "## Routes", ""]
    lines += table(("client endpoint", "Ollama engine", "vLLM engine"), route_rows())
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
