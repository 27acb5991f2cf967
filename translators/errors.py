"""Error bodies in each client dialect (DESIGN section 3).

`/v1/*` callers get OpenAI's `{"error": {"message", "type", "code"}}`; `/api/*` callers get
Ollama's `{"error": "message"}`; `/v1/messages` callers get Anthropic's
`{"type": "error", "error": {"type", "message"}}`. The status decides OpenAI's `type` unless one is
given, and always decides Anthropic's (its SDK picks the exception class from the status alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OPENAI = "openai"
OLLAMA = "ollama"
ANTHROPIC = "anthropic"

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}

# Anthropic's error types by status (its errors reference); 503 is the gateway's "overloaded" (Anthropic
# says 529), and any other 4xx is invalid_request_error, any other 5xx api_error, as Anthropic does.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


@dataclass
class GatewayError(Exception):
    """An error the gateway answers itself, in whatever dialect the caller speaks."""

    status: int
    message: str
    code: str | None = None
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def openai_error(status: int, message: str, code: str | None = None, error_type: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": error_type or OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": None,
            "code": code,
        }
    }


def ollama_error(message: str) -> dict:
    return {"error": message}


def anthropic_error(status: int, message: str) -> dict:
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, fallback), "message": message}}


def error_body(dialect: str, error: GatewayError) -> bytes:
    if dialect == OPENAI:
        body = openai_error(error.status, error.message, error.code, error.error_type)
    elif dialect == ANTHROPIC:
        body = anthropic_error(error.status, error.message)
    else:
        body = ollama_error(error.message)
    return json.dumps(body).encode()
