"""Structured outputs: the schema is checked when the request arrives, the output against it at the end.

A schema is the caller's, and so, through the prompt, is the output. Neither may make the gateway
touch the network or the disk, or work without bound on its event loop:

- Validators resolve references in an empty registry whose retrieval refuses every URI, so no `$ref`,
  `$dynamicRef` or `$id`-relative reference can fetch anything, whatever the request check missed.
- When the request arrives (`check_schema`), a schema must name no metaschema but a draft jsonschema
  ships, refer only within itself (`#...`), hold at most MAX_SCHEMA_NODES JSON values nested at most
  MAX_SCHEMA_DEPTH deep, and every `pattern` and `patternProperties` regex must compile to the
  linear-time matcher of translators.bounded_regex (or 400 in the caller's dialect); then it must be
  valid under its metaschema (or 422, like any other unacceptable value).
- At the end (`validate_output`), an output over MAX_VALIDATED_OUTPUT_CHARS is not validated, and
  validation stops after VALIDATION_STEP_BUDGET steps (keyword evaluations, regex steps, items compared
  by uniqueItems); both are reported as an invalid result. Nothing raises out of `validate_output`:
  any failure of a schema is a reported result.
"""

from __future__ import annotations

import itertools
import json
from contextvars import ContextVar
from typing import Any

from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.validators import extend, validator_for
from referencing import Registry
from referencing.exceptions import NoSuchResource

from translators.bounded_regex import UnsafePattern, compile_pattern
from translators.canonical import ResponseFormat
from translators.errors import GatewayError

# Enough to tell the caller what went wrong without storing a novel in the audit log.
MAX_REPORTED_ERRORS = 10
MAX_REPORTED_ERROR_CHARS = 300
# Errors gathered before sorting the first MAX_REPORTED_ERRORS: an output invalid everywhere stays cheap.
MAX_COLLECTED_ERRORS = 100

MAX_SCHEMA_NODES = 4000
MAX_SCHEMA_DEPTH = 48
MAX_VALIDATED_OUTPUT_CHARS = 512 * 1024
# A step is one keyword evaluated, one character through one regex state, or one item compared by
# uniqueItems; resolving a reference costs REFERENCE_STEPS (about twenty times slower), an error
# ERROR_STEPS.
# Measured: a 1000-object array of ten pattern-checked string properties takes 143 000 steps (0.4 s of
# one core); the worst schema found (an exponential oneOf/$ref chain) spends the budget in 0.3 s.
VALIDATION_STEP_BUDGET = 200_000
REFERENCE_STEPS = 20
# Each error passed up a level: it quotes the instance, and anyOf/oneOf make and discard many.
ERROR_STEPS = 10
# Each value of an enum: jsonschema compares them one by one in Python.
ENUM_STEPS = 5

REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are instance data, not schemas: a "$ref" key inside them is just data.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


KEYWORD_STEPS = dict.fromkeys(REFERENCE_KEYWORDS, REFERENCE_STEPS)


class ValidationBudgetExceeded(Exception):
    pass


class _Budget:
    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise ValidationBudgetExceeded


_BUDGET: ContextVar[_Budget] = ContextVar("validation_budget")


def _refuse_retrieval(uri: str):
    raise NoSuchResource(ref=uri)


# Metaschemas jsonschema ships are found without this registry; anything else is refused.
NO_RETRIEVAL_REGISTRY: Registry = Registry(retrieve=_refuse_retrieval)


# -- the request-time check --------------------------------------------------------------------------


def _unsafe(where: str, message: str) -> GatewayError:
    return GatewayError(400, f"'{where}' {message}", code="invalid_schema")


def check_schema_safety(schema: Any, where: str) -> None:
    """Refs local, size and depth bounded, regexes matchable in linear time; GatewayError(400) if not.

    Also for schemas the gateway never validates but an engine compiles (tool parameters, vLLM's
    `guided_json`): an engine that resolved a remote `$ref` would fetch it.
    """
    nodes = 0
    pattern_properties = unevaluated_properties = False
    stack: list[tuple[Any, str, int, bool]] = [(schema, where, 1, True)]
    while stack:
        value, path, depth, is_schema = stack.pop()
        nodes += 1
        if nodes + (len(value) if isinstance(value, (dict, list)) else 0) > MAX_SCHEMA_NODES:
            raise _unsafe(where, f"is too large: a schema may hold at most {MAX_SCHEMA_NODES} JSON values")
        if depth > MAX_SCHEMA_DEPTH:
            raise _unsafe(where, f"is nested too deeply: a schema may nest at most {MAX_SCHEMA_DEPTH} levels")
        if isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1, is_schema) for index, item in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        for key, item in value.items():
            here = f"{path}.{key}"
            if is_schema and key in REFERENCE_KEYWORDS and isinstance(item, str) and not item.startswith("#"):
                raise _unsafe(
                    here, f"is {item!r}: only references within the schema itself ('#...') are allowed"
                )
            if is_schema and key == "pattern" and isinstance(item, str):
                _check_pattern(item, here)
            if is_schema and key == "patternProperties" and isinstance(item, dict):
                pattern_properties = True
                for pattern in item:
                    _check_pattern(pattern, f"{here}[{pattern!r}]")
            unevaluated_properties |= is_schema and key == "unevaluatedProperties"
            stack.append((item, here, depth + 1, is_schema and key not in DATA_KEYWORDS))
    if pattern_properties and unevaluated_properties:
        raise _unsafe(where, "may not combine patternProperties with unevaluatedProperties")


def _check_pattern(pattern: str, where: str) -> None:
    try:
        compile_pattern(pattern)
    except UnsafePattern as exc:
        raise _unsafe(where, f"is not a pattern the gateway can check: {exc}") from None


def _validator_class(schema: dict, where: str):
    if "$schema" not in schema:
        return Draft202012Validator
    cls = validator_for(schema, default=None)
    if cls is None:
        raise _unsafe(
            f"{where}.$schema",
            f"is {schema['$schema']!r}, not a JSON Schema draft metaschema (or leave it out)",
        )
    return cls


def check_schema(schema: dict, where: str) -> None:
    check_schema_safety(schema, where)
    cls = _validator_class(schema, where)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:  # a value the request body may carry but not a usable one: 422, like others
        raise GatewayError(
            422, f"'{where}' is not a valid JSON schema: {exc.message}", code="invalid_schema"
        ) from exc
    except Exception as exc:  # a schema the metaschema check itself chokes on is no schema we can use
        raise _unsafe(where, f"cannot be checked as a JSON schema: {type(exc).__name__}") from exc


# -- validators that cannot fetch and count their work ---------------------------------------------


def _counted(keyword, steps: int = 1, per_value: bool = False):
    def run(validator, value, instance, schema):
        budget = _BUDGET.get()
        budget.spend(steps * len(value) if per_value and isinstance(value, list) else steps)
        errors = keyword(validator, value, instance, schema)
        return None if errors is None else _charged(errors, budget)

    return run


def _charged(errors, budget: _Budget):
    for error in errors:
        budget.spend(ERROR_STEPS)
        yield error


def _search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text, _BUDGET.get())


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in properties and not any(_search(pattern, key) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(extra) for extra in sorted(extras))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            regexes = ", ".join(repr(pattern) for pattern in sorted(patterns))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({joined} {verb} unexpected)")


def _identity(value: Any):
    """A hashable key equal for JSON values jsonschema calls equal (1 == 1.0, true != 1)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_identity(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _identity(item)) for key, item in value.items()))
    return ("string", value)


def _unique_items(validator, unique, instance, schema):
    """In linear time; jsonschema compares unsortable items (objects) pairwise."""
    if not unique or not validator.is_type(instance, "array"):
        return
    _BUDGET.get().spend(len(instance))
    seen = set()
    for item in instance:
        identity = _identity(item)
        if identity in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(identity)


_REPLACED_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
_BOUNDED_VALIDATORS: dict[type, type] = {}


def _bounded_validator_class(cls: type) -> type:
    if cls not in _BOUNDED_VALIDATORS:
        keywords = {
            keyword: _counted(function, KEYWORD_STEPS.get(keyword, 1))
            for keyword, function in cls.VALIDATORS.items()
        }
        if "enum" in keywords:
            keywords["enum"] = _counted(cls.VALIDATORS["enum"], ENUM_STEPS, per_value=True)
        keywords.update(
            (keyword, _counted(function))
            for keyword, function in _REPLACED_KEYWORDS.items()
            if keyword in cls.VALIDATORS
        )
        _BOUNDED_VALIDATORS[cls] = extend(cls, keywords)
    return _BOUNDED_VALIDATORS[cls]


# -- the output ---------------------------------------------------------------------------------------


def _invalid(message: str) -> dict:
    return {"valid": False, "errors": [message]}


def validate_output(response_format: ResponseFormat, text: str) -> dict:
    """{"valid": bool, "errors": [...]} for the assembled output text. Never raises."""
    if len(text) > MAX_VALIDATED_OUTPUT_CHARS:
        return _invalid(
            f"output is too large to validate ({len(text)} characters; the limit is {MAX_VALIDATED_OUTPUT_CHARS})"
        )
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _invalid(f"output is not valid JSON: {exc}")
    if response_format.type == "json_object" or response_format.schema is None:
        if isinstance(value, dict):
            return {"valid": True, "errors": []}
        return _invalid("output is JSON but not an object")
    try:
        return _validate(response_format.schema, value)
    except GatewayError as exc:
        return _invalid(f"output not validated: {exc.message}")
    except ValidationBudgetExceeded:
        return _invalid(
            f"output not validated: checking it against the schema needs more than {VALIDATION_STEP_BUDGET} "
            "steps (the validation budget)"
        )
    except Exception as exc:  # a caller's schema may fail in ways no check foresaw: report, never raise
        return _invalid(
            f"output not validated: the schema cannot be evaluated ({type(exc).__name__}: {exc})"[:500]
        )


def output_validator(schema: dict):
    """A validator for `schema` that resolves references only within it and counts its work."""
    cls = _bounded_validator_class(_validator_class(schema, "schema"))
    return cls(schema, registry=NO_RETRIEVAL_REGISTRY)


def _shortened(message: str) -> str:
    """jsonschema's messages quote the instance first and the broken rule last: keep both ends."""
    if len(message) <= MAX_REPORTED_ERROR_CHARS:
        return message
    half = MAX_REPORTED_ERROR_CHARS // 2
    return f"{message[:half]} … {message[-half:]}"


def _validate(schema: dict, value: Any) -> dict:
    check_schema_safety(schema, "schema")
    validator = output_validator(schema)
    token = _BUDGET.set(_Budget(VALIDATION_STEP_BUDGET))
    try:
        errors = list(itertools.islice(validator.iter_errors(value), MAX_COLLECTED_ERRORS))
        errors.sort(key=lambda error: error.json_path)
        messages = [
            _shortened(f"{error.json_path}: {error.message}") for error in errors[:MAX_REPORTED_ERRORS]
        ]
    finally:
        _BUDGET.reset(token)
    return {"valid": not errors, "errors": messages}
