"""Deterministic JSON instances of a JSON schema: the simulated model's structured outputs and tool arguments.

A real engine constrains decoding to the schema; the simulator builds one instance directly. It covers
what callers send in practice (OpenAI `json_schema`, Ollama `format`, pydantic's `model_json_schema()`):
object/properties/required, string (enum, const, formats, lengths), integer and number bounds, boolean,
null, arrays with item counts, `$ref` into `$defs`/`definitions`, `anyOf`/`oneOf` (first usable branch)
and `allOf` (merged). `pattern` is not honoured.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

SHALLOW_DEPTH = 4  # below this nesting only what the schema requires is built, so recursive schemas end
# fmt: off
WORDS = (
    "amber", "basin", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "juniper",
    "kettle", "lantern", "meadow", "nectar", "orchard", "pebble", "quartz", "river", "summit", "timber",
    "upland", "valley", "willow", "yarrow", "zephyr", "beacon", "canyon", "dune", "estuary", "falcon",
)
# fmt: on


class Draws:
    """An endless stream of integers derived from text, identical on every platform and Python version.

    SHA-256 in counter mode, because `random.Random` only promises a stable `random()` sequence.
    """

    def __init__(self, *seed_parts: str):
        self._key = hashlib.sha256("\x1f".join(seed_parts).encode()).digest()
        self._counter = 0

    def below(self, bound: int) -> int:
        block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
        self._counter += 1
        return int.from_bytes(block[:8], "big") % bound

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def choice(self, options):
        return options[self.below(len(options))]


def instance_for_schema(schema: dict | bool, draws: Draws) -> Any:
    """A value that validates against `schema`, chosen by `draws`."""
    return _Instance(schema if isinstance(schema, dict) else {}, draws).build(schema)


class _Instance:
    def __init__(self, root: dict, draws: Draws):
        self._root = root
        self._draws = draws

    def build(self, schema: dict | bool, depth: int = 0) -> Any:
        if not isinstance(schema, dict):
            return "value"  # the schema `true` accepts anything
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self._draws.choice(schema["enum"])
        if "allOf" in schema:
            return self.build(self._merge_all_of(schema), depth + 1)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(self._first_usable(schema[key]), depth + 1)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._draws.below(2) == 1
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: dict) -> dict:
        seen = 0
        while "$ref" in schema and seen < 32:
            target: Any = self._root
            for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
                if part:
                    target = target[part.replace("~1", "/").replace("~0", "~")]
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings}
            seen += 1
        return schema

    def _merge_all_of(self, schema: dict) -> dict:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self._resolve(part) if isinstance(part, dict) else {}
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = sorted({*merged.get("required", []), *value})
                else:
                    merged.setdefault(key, value)
        return merged

    def _first_usable(self, options: list) -> dict:
        for option in options:
            if isinstance(option, dict) and self._resolve(option).get("type") != "null":
                return option
        return options[0]

    @staticmethod
    def _type_of(schema: dict) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind:
            return kind
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "string"

    def _object(self, schema: dict, depth: int) -> dict:
        properties, required = schema.get("properties", {}), schema.get("required", [])
        optional = [n for n in properties if n not in required] if depth < SHALLOW_DEPTH else []
        names = [n for n in properties if n in required or n in optional]
        names += [n for n in required if n not in properties]
        return {name: self.build(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: dict, depth: int) -> list:
        low = schema.get("minItems", 1 if depth < SHALLOW_DEPTH else 0)
        high = max(low, min(schema.get("maxItems", low + 2), low + 2))
        items = schema.get("items", {})
        prefix = schema.get("prefixItems", [])
        count = self._draws.between(low, high)
        return [self.build(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]

    def _integer(self, schema: dict) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf", 1)
        if isinstance(step, int) and step > 1:
            first = -(-low // step) * step
            return first + step * self._draws.below(max(1, (high - first) // step + 1))
        return self._draws.between(low, high)

    def _number(self, schema: dict) -> float:
        low, high = _bounds(schema, integer=False)
        value = low + (high - low) * self._draws.below(1001) / 1000
        rounded = round(value, 3)
        return rounded if low <= rounded <= high else value

    def _string(self, schema: dict) -> str:
        word = self._draws.choice(WORDS)
        fmt = schema.get("format")
        day = self._draws.between(1, 28)
        if fmt == "date":
            return f"2024-03-{day:02d}"
        if fmt == "date-time":
            return f"2024-03-{day:02d}T12:00:00Z"
        if fmt == "time":
            return f"12:{day:02d}:00"
        if fmt == "email":
            return f"{word}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{word}"
        if fmt == "uuid":
            digest = hashlib.sha256(f"{word}{day}".encode()).hexdigest()
            return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"
        text = word.capitalize() + " " + self._draws.choice(WORDS)
        min_length = schema.get("minLength", 0)
        while len(text) < min_length:
            text += " " + self._draws.choice(WORDS)
        return text[: schema["maxLength"]] if "maxLength" in schema else text


def _bounds(schema: dict, integer: bool) -> tuple:
    low = schema.get("minimum", 0 if "maximum" not in schema else schema["maximum"] - 100)
    high = schema.get("maximum", low + 100)
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + (1 if integer else 0.001)
        high = max(high, low)
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - (1 if integer else 0.001)
        low = min(low, high)
    if integer:
        return math.ceil(low), math.floor(high)
    return float(low), float(high)
