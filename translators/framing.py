"""Stream framing: vLLM speaks Server-Sent Events, Ollama newline-delimited JSON.

The decoders take bytes cut anywhere (mid-line, mid-UTF-8 character) and give back complete
payloads; nothing is decoded until its line is complete.
"""

from __future__ import annotations

import json

import orjson

SSE_DONE_PAYLOAD = b"[DONE]"
SSE_DONE = b"data: [DONE]\n\n"


def dumps(value: object) -> bytes:
    """Compact JSON, as the engines write it. orjson writes it in a fraction of the time (every streamed
    token is encoded once); what it refuses (an integer beyond 64 bits from a caller's body) goes the slow way."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(payload: bytes) -> object:
    """An engine's JSON (ValueError if it is not JSON): orjson, and the standard library for what only it reads
    (NaN, an integer beyond 64 bits)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def ndjson_line(payload: bytes) -> bytes:
    return payload + b"\n"


class SSEDecoder:
    """text/event-stream → the `data` of each event (several `data:` lines joined by newlines)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._saw_carriage_return = False

    def feed(self, data: bytes) -> list[bytes]:
        if b"\r" in data:
            self._saw_carriage_return = True
        elif not self._buffer and not self._data and data.endswith(b"\n\n"):
            if (events := single_line_data_events(data)) is not None:
                return events
        self._buffer += data
        payloads: list[bytes] = []
        start = 0
        while True:
            end, terminator = self._next_line_end(start)
            if end < 0:
                break
            self._on_line(self._buffer[start:end], payloads)
            start = end + terminator
        self._buffer = self._buffer[start:]
        return payloads

    def finish(self) -> list[bytes]:
        """An unterminated last line or event still counts: the engine closed the stream after it."""
        payloads: list[bytes] = []
        if self._buffer:
            self._on_line(self._buffer.rstrip(b"\r"), payloads)
            self._buffer = b""
        self._on_line(b"", payloads)
        return payloads

    def _next_line_end(self, start: int) -> tuple[int, int]:
        newline = self._buffer.find(b"\n", start)
        if not self._saw_carriage_return:
            return newline, 1
        carriage = self._buffer.find(b"\r", start)
        if carriage < 0 or (0 <= newline < carriage):
            return newline, 1
        if carriage + 1 == len(self._buffer):
            return -1, 0  # a lone \r at the end may be the first half of \r\n: wait for more
        return carriage, 2 if self._buffer[carriage + 1 : carriage + 2] == b"\n" else 1

    def _on_line(self, line: bytes, payloads: list[bytes]) -> None:
        if not line:
            if self._data:
                payloads.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)


def single_line_data_events(data: bytes) -> list[bytes] | None:
    """The payloads of whole events that are one `data: ` line each (as the engines write them), or None for
    anything else, which the line-by-line reading takes."""
    events = data[:-2].split(b"\n\n")
    if data.count(b"\n") != 2 * len(events):  # a line break inside an event: not one line each
        return None
    for event in events:
        if not event.startswith(b"data: "):
            return None
    return [event[6:] for event in events]


class NDJSONDecoder:
    """application/x-ndjson → one payload per non-blank line."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        if b"\n" not in data:
            return []
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.strip() for line in lines if line.strip()]

    def finish(self) -> list[bytes]:
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []
