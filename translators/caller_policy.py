"""What a caller may set: `CALLER_FIELD_POLICY` and the option tables of translators.mapping, applied.

`screen(req)` runs once, when the request arrives: it refuses (GatewayError 400) what the policy
refuses, and rewrites `req.body` (the body every engine request is built from, pass-through
included) without what it drops, recording a note for each in `req.withheld`.
"""

from __future__ import annotations

import json

from translators.canonical import CanonicalRequest
from translators.errors import GatewayError
from translators.mapping import (
    BOUNDED,
    CALLER_FIELD_POLICY,
    DROPPED,
    MAX_CHOICES,
    OLLAMA_ONLY_OPTIONS,
    REFUSED,
    REPLACED,
    SAMPLING_PARAMETERS,
    UNKNOWN_OPTION,
    WITHHELD_OLLAMA_OPTIONS,
)
from translators.request_body import is_integer
from translators.structured import check_schema_safety

PERMITTED_OLLAMA_OPTIONS = frozenset(
    [parameter.ollama for parameter in SAMPLING_PARAMETERS] + list(OLLAMA_ONLY_OPTIONS)
)


def screen(req: CanonicalRequest) -> None:
    body = dict(req.body)
    notes: list[str] = []
    for rule in CALLER_FIELD_POLICY:
        if req.client_endpoint not in rule.endpoints or body.get(rule.field) is None:
            continue
        if rule.treatment == REFUSED:
            raise GatewayError(
                400,
                f"'{rule.field}' is not accepted on {req.client_endpoint}: {rule.becomes}",
                code="field_not_allowed",
            )
        if rule.treatment == BOUNDED:
            check_bound(rule.field, body[rule.field])
        elif rule.treatment in (DROPPED, REPLACED):
            del body[rule.field]
            verb = "dropped by the gateway" if rule.treatment == DROPPED else "replaced"
            notes.append(f"{rule.field}: {verb} ({rule.becomes})")
    if isinstance(body.get("options"), dict):
        body["options"], option_notes = permitted_options(body["options"])
        notes.extend(option_notes)
        req.engine_options = {
            name: value for name, value in req.engine_options.items() if name in PERMITTED_OLLAMA_OPTIONS
        }
    check_engine_schemas(req, body)
    req.keep_alive = None
    req.body = body
    req.withheld = notes


def check_bound(field: str, value: object) -> None:
    if is_integer(value) and value > MAX_CHOICES:
        raise GatewayError(
            400, f"'{field}' is {value}; the gateway allows at most {MAX_CHOICES}", code="invalid_value"
        )


def permitted_options(options: dict) -> tuple[dict, list[str]]:
    kept: dict = {}
    notes: list[str] = []
    for name, value in options.items():
        if name in PERMITTED_OLLAMA_OPTIONS or value is None:
            kept[name] = value
        else:
            why = WITHHELD_OLLAMA_OPTIONS.get(name, UNKNOWN_OPTION)
            notes.append(f"options.{name}: dropped by the gateway ({why})")
    return kept, notes


def check_engine_schemas(req: CanonicalRequest, body: dict) -> None:
    """JSON schemas an engine compiles itself: a remote `$ref` there would be fetched by the engine."""
    for index, tool in enumerate(req.tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if isinstance(parameters, dict):
            check_schema_safety(parameters, f"tools[{index}].function.parameters")
    candidates = [("guided_json", body.get("guided_json"))]
    structured_outputs = body.get("structured_outputs")
    if isinstance(structured_outputs, dict):
        candidates.append(("structured_outputs.json", structured_outputs.get("json")))
    response_format = body.get("response_format")
    structures = response_format.get("structures") if isinstance(response_format, dict) else None
    for index, structure in enumerate(structures if isinstance(structures, list) else []):
        if isinstance(structure, dict):
            candidates.append((f"response_format.structures[{index}].schema", structure.get("schema")))
    for where, schema in candidates:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except (ValueError, RecursionError):
                continue  # not JSON: the engine refuses it, and fetches nothing
        if isinstance(schema, (dict, list)):
            check_schema_safety(schema, where)
