"""Reading a client's JSON body with errors that name the field and what was expected.

400: the body is not JSON, or a field has the wrong JSON type; 413: too large;
422: a required field is missing or a value is not acceptable. Null counts as absent everywhere
(LangChain's OllamaEmbeddings sends options full of nulls).
"""

from __future__ import annotations

import json
from typing import Any

from translators.errors import GatewayError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def json_type_name(value: Any) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def load_json_object(body: bytes, max_body_bytes: int) -> dict:
    if len(body) > max_body_bytes:
        raise GatewayError(
            413,
            f"request body is {len(body)} bytes; the limit is {max_body_bytes} bytes",
            code="request_too_large",
        )
    if not body.strip():
        raise GatewayError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise GatewayError(
            400, f"request body must be a JSON object, not {json_type_name(value)}", code="invalid_json"
        )
    return value


def wrong_type(where: str, expected: str, value: Any) -> GatewayError:
    return GatewayError(
        400, f"'{where}' must be {expected}, not {json_type_name(value)}", code="invalid_type"
    )


def invalid_value(where: str, message: str) -> GatewayError:
    return GatewayError(422, f"'{where}' {message}", code="invalid_value")


def missing(where: str) -> GatewayError:
    return GatewayError(422, f"'{where}' is required", code="missing_field")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def required_str(body: dict, key: str, where: str | None = None) -> str:
    value = body.get(key)
    if value is None:
        raise missing(where or key)
    if not isinstance(value, str):
        raise wrong_type(where or key, "a string", value)
    if not value:
        raise invalid_value(where or key, "must not be empty")
    return value


def optional_str(body: dict, key: str, where: str | None = None) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise wrong_type(where or key, "a string", value)
    return value


def optional_bool(body: dict, key: str, default: bool, where: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(where or key, "a boolean", value)
    return value


def optional_int(body: dict, key: str, where: str | None = None) -> int | None:
    value = body.get(key)
    if value is not None and not is_integer(value):
        raise wrong_type(where or key, "an integer", value)
    return value


def optional_dict(body: dict, key: str, where: str | None = None) -> dict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wrong_type(where or key, "an object", value)
    return value


def optional_list(body: dict, key: str, where: str | None = None) -> list:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise wrong_type(where or key, "an array", value)
    return value


def optional_keep_alive(body: dict) -> str | int | float | None:
    """Ollama's keep_alive: a duration string ("5m") or a number of seconds."""
    value = body.get("keep_alive")
    if value is not None and not isinstance(value, str) and not is_number(value):
        raise wrong_type("keep_alive", 'a duration string ("5m") or a number of seconds', value)
    return value
