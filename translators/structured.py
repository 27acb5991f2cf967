"""Structured outputs: the schema is checked when the request arrives, the output against it at the end."""

from __future__ import annotations

import json

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from translators.canonical import ResponseFormat
from translators.errors import GatewayError

# Enough to tell the caller what went wrong without storing a novel in the audit log.
MAX_REPORTED_ERRORS = 10


def check_schema(schema: dict, where: str) -> None:
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise GatewayError(
            422, f"'{where}' is not a valid JSON schema: {exc.message}", code="invalid_schema"
        ) from exc


def validate_output(response_format: ResponseFormat, text: str) -> dict:
    """{"valid": bool, "errors": [...]} for the assembled output text."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return {"valid": False, "errors": [f"output is not valid JSON: {exc}"]}
    if response_format.type == "json_object" or response_format.schema is None:
        if isinstance(value, dict):
            return {"valid": True, "errors": []}
        return {"valid": False, "errors": ["output is JSON but not an object"]}
    validator = validator_for(response_format.schema)(response_format.schema)
    errors = sorted(validator.iter_errors(value), key=lambda error: error.json_path)
    messages = [f"{error.json_path}: {error.message}" for error in errors[:MAX_REPORTED_ERRORS]]
    return {"valid": not errors, "errors": messages}
