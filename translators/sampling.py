"""Sampling and limits: reading and writing the parameters of `SAMPLING_PARAMETERS` in each dialect."""

from __future__ import annotations

from typing import Any

from translators.mapping import (
    OLLAMA_ONLY_OPTIONS,
    SAMPLING_PARAMETERS,
    UNKNOWN_OLLAMA_OPTION,
    SamplingParameter,
)
from translators.request_body import invalid_value, is_integer, is_number, wrong_type


def read_value(parameter: SamplingParameter, value: Any, where: str) -> Any:
    if parameter.value_type == "integer":
        if not is_integer(value):
            raise wrong_type(where, "an integer", value)
        return value
    if parameter.value_type == "number":
        if not is_number(value):
            raise wrong_type(where, "a number", value)
        return value
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise wrong_type(where, "a string or an array of strings", value)
    return list(value)


def read_openai_sampling(body: dict) -> dict[str, Any]:
    """Top-level OpenAI/vLLM fields → canonical sampling; the first non-null alias wins."""
    sampling: dict[str, Any] = {}
    for parameter in SAMPLING_PARAMETERS:
        for name in parameter.openai:
            if body.get(name) is not None:
                sampling[parameter.canonical] = read_value(parameter, body[name], name)
                break
    return sampling


def read_ollama_options(options: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ollama `options` → (canonical sampling, the other options kept for Ollama). Nulls are ignored."""
    by_ollama_name = {parameter.ollama: parameter for parameter in SAMPLING_PARAMETERS}
    sampling: dict[str, Any] = {}
    engine_options: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        parameter = by_ollama_name.get(name)
        if parameter is None:
            engine_options[name] = value
        else:
            sampling[parameter.canonical] = read_value(parameter, value, f"options.{name}")
    return sampling, engine_options


def write_vllm_sampling(sampling: dict[str, Any], body: dict) -> None:
    for parameter in SAMPLING_PARAMETERS:
        value = sampling.get(parameter.canonical)
        if value is None or (parameter.canonical == "max_tokens" and value < 0):
            continue
        body[parameter.openai[-1]] = value


def write_ollama_options(sampling: dict[str, Any], engine_options: dict[str, Any]) -> dict[str, Any]:
    options = dict(engine_options)
    for parameter in SAMPLING_PARAMETERS:
        if sampling.get(parameter.canonical) is not None:
            options[parameter.ollama] = sampling[parameter.canonical]
    return options


def ollama_option_notes(engine_options: dict[str, Any]) -> list[str]:
    """Why each Ollama-only option cannot reach vLLM."""
    return [
        f"options.{name}: dropped for vllm ({OLLAMA_ONLY_OPTIONS.get(name, UNKNOWN_OLLAMA_OPTION)})"
        for name in engine_options
    ]


def check_max_tokens(sampling: dict[str, Any], where: str) -> None:
    value = sampling.get("max_tokens")
    if value is not None and value < -2:
        raise invalid_value(where, f"must be -1 (no limit), -2 (fill the context) or at least 0, not {value}")
