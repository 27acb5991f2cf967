"""How the admin API reads and writes values: checked JSON body fields, query filters, UTC timestamps.

Readers return a clean value or raise `FieldError`, whose `status` follows the admin API's rule:
400 for a request that is not the right shape at all (no JSON, a required field missing, a bad
query filter), 422 for a field that is there with a value that cannot be accepted.
"""

from __future__ import annotations

import datetime as dt
import math
import re

_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class FieldError(ValueError):
    def __init__(
        self, message: str, status: int = 422, param: str | None = None, code: str = "invalid_field"
    ):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def iso_utc(value: dt.datetime | None) -> str | None:
    """A stored (naive UTC) timestamp as the API writes it: `2025-03-01T12:00:00Z`."""
    return value.isoformat(timespec="seconds") + "Z" if value else None


def parse_timestamp(text: str) -> dt.datetime:
    """ISO-8601 (`2025-03-01`, `2025-03-01T12:00`, `…Z`, `…+02:00`) as naive UTC, like stored times.
    A time without an offset is taken as UTC. Raises ValueError."""
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def check_fields(body, known: tuple[str, ...], shape: str) -> dict:
    """`body` as a dict with no field outside `known`; `shape` tells the caller what to send."""
    if not isinstance(body, dict):
        raise FieldError(f"request body must be a JSON object: {shape}", status=400, code="invalid_json")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise FieldError(f"unknown field {unknown[0]!r} (known: {', '.join(known)})", param=unknown[0])
    return body


def required(body: dict, field: str):
    if body.get(field) in (None, ""):
        raise FieldError(f"missing required field {field!r}", status=400, param=field, code="missing_field")
    return body[field]


def text(field: str, value, max_length: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FieldError(f"{field!r} must be a string, not {value!r}", param=field)
    value = value.strip()
    if not value and not allow_empty:
        raise FieldError(f"{field!r} must not be empty", param=field)
    if len(value) > max_length:
        raise FieldError(f"{field!r} is longer than {max_length} characters", param=field)
    return value


def integer(field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{field!r} must be a whole number, not {value!r}", param=field)
    if not low <= value <= high:
        raise FieldError(f"{field!r} must be from {low} to {high}, not {value!r}", param=field)
    return value


def positive_number(field: str, value, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError(f"{field!r} must be a number, not {value!r}", param=field)
    if not 0 < value <= high:
        raise FieldError(f"{field!r} must be greater than 0 and at most {high:g}, not {value!r}", param=field)
    return float(value)


def boolean(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"{field!r} must be true or false, not {value!r}", param=field)
    return value


def timestamp(field: str, value) -> dt.datetime:
    if not isinstance(value, str):
        raise FieldError(f"{field!r} must be an ISO-8601 string like 2025-12-31T23:59:59Z", param=field)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise FieldError(
            f"{field!r} {value!r} is not an ISO-8601 time (like 2025-12-31T23:59:59Z)", param=field
        ) from None


def period(value: str) -> str:
    """A query's `period` (a month, "YYYY-MM"); 400 otherwise."""
    if not _PERIOD.match(value):
        raise FieldError(
            f"period {value!r} must be a month like 2025-03",
            status=400,
            param="period",
            code="invalid_filter",
        )
    return value
