"""Reading a client's JSON body with errors that name the field and what was expected.

400: the body is not JSON, or a field has the wrong JSON type; 413: too large;
422: a required field is missing or a value is not acceptable. Null counts as absent everywhere
(LangChain's OllamaEmbeddings sends options full of nulls).

Python's json module accepts more than every later step can carry, so a body is also refused (400)
when it nests deeper than MAX_NESTING_DEPTH (deep nesting raised RecursionError here or later, in
copying, encoding or validating), when a string or key holds an unpaired UTF-16 surrogate (`"\\ud800"`,
or its bytes, decode, then fail to encode as UTF-8 for the engine or the audit log), or when a number is NaN,
±Infinity or overflows a float (not JSON; the engines' parsers refuse them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from translators.errors import GatewayError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# Deep enough for any real request (a tool's parameter schema inside tools[].function.parameters
# included, see translators.structured.MAX_SCHEMA_DEPTH), shallow enough for every recursive step.
MAX_NESTING_DEPTH = 64
# json.loads decodes bytes with "surrogatepass", so a surrogate arrives as a \uD800-\uDFFF escape,
# as UTF-8-encoded surrogate bytes (ED A0-BF ..), or in a UTF-16/32 body as a code unit of its own.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_UTF8_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")

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
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise GatewayError(
            400, f"request body must be a JSON object, not {json_type_name(value)}", code="invalid_json"
        )
    may_nest_too_deep = body.count(b"[") + body.count(b"{") > MAX_NESTING_DEPTH
    may_hold_surrogates = (
        not json.detect_encoding(body).startswith("utf-8")
        or _SURROGATE_ESCAPE.search(body) is not None
        or _UTF8_SURROGATE.search(body) is not None
    )
    if may_nest_too_deep or may_hold_surrogates:
        check_depth_and_strings(value, may_hold_surrogates)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _too_deep() -> GatewayError:
    return GatewayError(
        400, f"request body nests more than {MAX_NESTING_DEPTH} levels deep", code="invalid_json"
    )


def _path_text(path: tuple) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text or "(the body)"


def _lone_surrogate(path: tuple) -> GatewayError:
    where = _path_text(path).encode("utf-8", "backslashreplace").decode()
    return GatewayError(
        400,
        f"'{where}' holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff); send valid Unicode",
        code="invalid_json",
    )


def check_depth_and_strings(value: Any, check_strings: bool) -> None:
    """Without recursion: no container deeper than MAX_NESTING_DEPTH, no lone surrogate in a string or key."""
    stack: list[tuple[Any, int, tuple]] = [(value, 1, ())]
    while stack:
        container, depth, path = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            raise _too_deep()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if check_strings and isinstance(key, str) and _SURROGATE.search(key):
                raise _lone_surrogate((*path, key))
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1, (*path, key)))
            elif check_strings and isinstance(item, str) and _SURROGATE.search(item):
                raise _lone_surrogate((*path, key))


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


def parse_tools(body: dict) -> list[dict]:
    """Function tools, the one kind both dialects and both engines share (an engine given another kind, or
    a nameless function, fails with a 500 of its own)."""
    tools = optional_list(body, "tools")
    for index, tool in enumerate(tools):
        if (not isinstance(tool, dict) or tool.get("type", "function") != "function"
                or not isinstance(tool.get("function"), dict)):
            raise invalid_value(f"tools[{index}]", 'must be {"type": "function", "function": {...}}')
        required_str(tool["function"], "name", f"tools[{index}].function.name")
    return tools
